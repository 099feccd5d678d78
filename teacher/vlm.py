"""The VLM teacher: SpatialReward-8B (a merged Qwen3-VL-8B-Instruct) or any VLM judge, turned into `Judgement`s.

Protocol of the released model (arXiv 2602.07458), two calls per edit:

- **SC** — images [source, edited] + the instruction → ``edit_region`` boxes (0–1000 on the edited image),
  ``reasoning``, ``score`` = [instruction_following, consistency], each 0–25.
- **PQ** — image [edited] → ``reasoning``, ``score`` = [naturalness, artifacts], each 0–25.

Greedy decoding, up to 512 new tokens, images capped near 512×512 pixels (the model's training size).

This file holds what does not depend on where the model runs: `TeacherConfig`, the request/answer records,
`VLMTeacher` (prompting, parsing, the retry policy, combining both calls into one `Judgement`) and the
**transformers** backend. The OpenAI-compatible HTTP backend lives in `openai_backend.py`.

Retry policy (explicit, configurable): an answer that cannot be read is asked again ``parse_retries`` times with
sampling (``retry_temperature``, a seed fixed per sample and attempt); if none can be read the call is
``parse_error``. A call that got no answer at all (HTTP error after the backend's own retries, a generation
crash) is ``failed``. The judgement is ``ok`` only when both calls are; otherwise it carries no reward and says
which call failed and why. Nothing is ever filled with a default score.

Example::

    teacher = VLMTeacher.from_pretrained("SpatialReward/SpatialReward-8B")   # or a local folder
    judgements = teacher.judge_batch(samples, root="data/mine")
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

from spatialreward.images import load_image
from spatialreward.teacher.parsing import CallType, ParsedAnswer, parse_answer
from spatialreward.teacher.prompts import load_prompts
from spatialreward.types import EditSample, Judgement

CallStatus = Literal["ok", "parse_error", "failed"]
TRAINING_PIXELS = 512 * 512  # SpatialReward-8B was trained on images near 512×512


class TeacherLoadError(ValueError):
    """A teacher that cannot be built (missing model, unreachable server); the message says what to do."""


@dataclass
class TeacherConfig:
    """Everything the VLM teacher and its labeler can be told, with the defaults of the released protocol.

    Prompts:
        prompt_file: JSON file with the wording to use instead of the packaged ``sr-v1`` (see `prompts`).
        name: teacher name in label records and the label folder (default: derived from the model).
    Images:
        max_image_pixels: images larger than this are downscaled (aspect kept) before they are sent.
    Generation:
        max_new_tokens: answer length cap per call.
        batch_size: requests per ``generate`` call (transformers backend).
    Parse policy:
        parse_retries: how many times an unreadable answer is asked again, with sampling.
        retry_temperature: sampling temperature of those retries.
    Transformers backend:
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ...
        dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``bfloat16``, ``float16`` or ``float32``.
    HTTP backend:
        concurrency: requests in flight at once.
        timeout_s: per request.
        http_retries: retries of a request after a timeout, a 429/5xx or a malformed body.
        backoff_s: first retry delay; doubles each retry (with jitter).
        api_key_env: environment variable holding the API key (none sent when unset).
    """

    # Prompts
    prompt_file: str | None = field(default=None, metadata={"help": "JSON prompts replacing the packaged sr-v1."})
    name: str | None = field(default=None, metadata={"help": "Teacher name for label records and folder."})
    # Images
    max_image_pixels: int = field(default=TRAINING_PIXELS, metadata={"help": "Downscale images above this."})
    # Generation
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length cap per call."})
    batch_size: int = field(default=8, metadata={"help": "Requests per generate() call (transformers)."})
    # Parse policy
    parse_retries: int = field(default=1, metadata={"help": "Re-asks, with sampling, of an unreadable answer."})
    retry_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of those re-asks."})
    # Transformers backend
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "auto | bfloat16 | float16 | float32."})
    # HTTP backend
    concurrency: int = field(default=16, metadata={"help": "HTTP requests in flight at once."})
    timeout_s: float = field(default=120.0, metadata={"help": "HTTP timeout per request, seconds."})
    http_retries: int = field(default=4, metadata={"help": "Retries after a timeout, 429/5xx or bad body."})
    backoff_s: float = field(default=1.0, metadata={"help": "First HTTP retry delay, doubled each retry."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env variable with the API key."})

    def __post_init__(self) -> None:
        smallest = 56 * 56  # Qwen processors need at least 2×2 merged patches of 14–16 px
        if self.max_image_pixels < smallest:
            raise ValueError(
                f"max_image_pixels={self.max_image_pixels} is below {smallest} (56×56); use >= {smallest}"
            )
        for name in ("max_new_tokens", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("parse_retries", "http_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 disables retries)")
        if self.parse_retries > 0 and not self.retry_temperature > 0:
            raise ValueError(
                f"retry_temperature={self.retry_temperature}: re-asks with greedy decoding repeat the same answer; "
                "use a temperature > 0 (0.7) or parse_retries=0"
            )
        if not (self.timeout_s > 0 and self.backoff_s >= 0):
            raise ValueError(f"timeout_s={self.timeout_s} must be > 0 and backoff_s={self.backoff_s} >= 0")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype={self.dtype!r}: use auto, bfloat16, float16 or float32")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to rebuild the config in another process (Ray actors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------------------------------------------
# What goes to a backend and what comes back
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """One call: images first, then text, as a single user turn. ``seed`` makes sampled re-asks repeatable."""

    images: list[Image.Image]
    text: str
    system: str | None = None
    seed: int = 0


@dataclass
class Completion:
    """A backend's answer to one request: ``text``, or ``error`` when no answer came."""

    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Backend(Protocol):
    """Runs chat requests. Must return one `Completion` per request, in order, and not raise for one bad one."""

    name: str
    preferred_batch_size: int

    def complete(self, requests: Sequence[ChatRequest], *, temperature: float) -> list[Completion]: ...


def chat_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The request as chat messages in the transformers content-list format."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
    content: list[dict[str, Any]] = [{"type": "image"} for _ in request.images]
    content.append({"type": "text", "text": request.text})
    messages.append({"role": "user", "content": content})
    return messages


def vlm_name(model: str | Path) -> str:
    """Teacher name of a transformers model: ``vlm:`` + the hub id, or + the folder name of a local checkpoint."""
    return f"vlm:{Path(model).resolve().name if Path(model).is_dir() else model}"


def cap_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale so that width × height <= ``max_pixels``, keeping the aspect ratio (never upscales)."""
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------------------------
# Transformers backend
# ---------------------------------------------------------------------------------------------------------------


class TransformersBackend:
    """`AutoProcessor` + `AutoModelForImageTextToText` (Qwen2.5-VL, Qwen3-VL, ...), batched with left padding.

    Arguments:
        model: local folder or hub id (the hub is only reached when the folder does not exist).
        device / dtype: see `TeacherConfig`.
        batch_size: requests per ``generate``; a batch that runs out of GPU memory is split in half and retried.
        max_new_tokens: answer cap.
    """

    def __init__(
        self, model: str | Path, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
        max_new_tokens: int = 512,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(str(model))
            self.model = AutoModelForImageTextToText.from_pretrained(str(model), dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise TeacherLoadError(
                f"cannot load a VLM from {str(model)!r} ({type(exc).__name__}: {exc}). Pass a local folder made by "
                "save_pretrained (config.json, processor and tokenizer files, weights), or a hub id such as "
                "SpatialReward/SpatialReward-8B on a machine that can download it"
            ) from exc
        self.model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # decoder-only batching: prompts end where generation starts
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.batch_size = batch_size
        self.preferred_batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.model_id = str(model)
        self.name = vlm_name(model)

    def complete(self, requests: Sequence[ChatRequest], *, temperature: float) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._complete_chunk(list(requests[start : start + self.batch_size]), temperature))
        return out

    def _complete_chunk(self, chunk: list[ChatRequest], temperature: float) -> list[Completion]:
        import torch

        try:
            return self._generate(chunk, temperature)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(chunk) == 1:
                return [Completion(text=None, error=f"out of memory on one request: {exc}")]
            half = len(chunk) // 2
            return self._complete_chunk(chunk[:half], temperature) + self._complete_chunk(chunk[half:], temperature)
        except (RuntimeError, ValueError, TypeError) as exc:
            # A generation crash fails this chunk's calls, not the run; the labeler records them as failed.
            error = f"generation failed: {type(exc).__name__}: {exc}"
            return [Completion(text=None, error=error) for _ in chunk]

    def _generate(self, chunk: list[ChatRequest], temperature: float) -> list[Completion]:
        import torch

        prompts = [
            self.processor.apply_chat_template(chat_messages(r), tokenize=False, add_generation_prompt=True)
            for r in chunk
        ]
        inputs = self.processor(
            text=prompts, images=[r.images for r in chunk], padding=True, return_tensors="pt"
        ).to(self.device)
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if temperature > 0:
            torch.manual_seed(chunk[0].seed)  # one seed per chunk: repeatable for a fixed batch composition
            options.update(do_sample=True, temperature=temperature)
        else:
            # Checkpoints ship sampling defaults (Qwen3-VL: top_k=20, top_p=0.8); greedy needs none of them.
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]  # [B, T_new]; left padding puts every prompt end at prompt_length
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        return [
            Completion(text=t, prompt_tokens=int(p), completion_tokens=self._answer_length(row.tolist()))
            for t, p, row in zip(texts, prompt_counts, new_tokens, strict=True)
        ]

    def _answer_length(self, tokens: list[int]) -> int:
        """Generated tokens up to and including the first end-of-turn token (the rest is padding)."""
        for i, t in enumerate(tokens):
            if t in self._eos_ids:
                return i + 1
        return len(tokens)


# ---------------------------------------------------------------------------------------------------------------
# The teacher
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CallOutcome:
    """One call of one sample after the retry policy: its status, answer(s) and cost."""

    call: CallType
    status: CallStatus = "failed"
    parsed: ParsedAnswer | None = None
    texts: list[str] = field(default_factory=list)  # raw answer of every attempt that produced text
    attempts: int = 0
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class VLMTeacher:
    """Judges edits with a VLM through a `Backend`; the same `judge_batch` as every `Teacher`.

    Arguments:
        backend: a `TransformersBackend`, an `OpenAIBackend` or anything with the `Backend` interface.
        config: prompts, image cap and the retry policy; `TeacherConfig()` by default.
    """

    def __init__(self, backend: Backend, config: TeacherConfig | None = None):
        self.backend = backend
        self.config = config or TeacherConfig()
        self.prompts = load_prompts(self.config.prompt_file)
        self.name = self.config.name or backend.name
        self.prompt_version = self.prompts.version
        self.batch_size = backend.preferred_batch_size  # samples the labeler hands over at once

    @classmethod
    def from_pretrained(cls, model: str | Path, config: TeacherConfig | None = None) -> VLMTeacher:
        """A teacher running ``model`` (local folder or hub id) with transformers."""
        config = config or TeacherConfig()
        backend = TransformersBackend(
            model, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
        )
        return cls(backend, config)

    @classmethod
    def from_openai(cls, base_url: str, model: str | None = None, config: TeacherConfig | None = None) -> VLMTeacher:
        """A teacher behind an OpenAI-compatible server (vLLM, SGLang, a hosted judge)."""
        from spatialreward.teacher.openai_backend import OpenAIBackend

        config = config or TeacherConfig()
        return cls(OpenAIBackend.from_config(base_url, model, config), config)

    # -----------------------------------------------------------------------------------------------------------

    def judge(self, sample: EditSample, root: str | Path) -> Judgement:
        return self.judge_batch([sample], root)[0]

    def judge_batch(self, samples: Sequence[EditSample], root: str | Path) -> list[Judgement]:
        """One `Judgement` per sample, in order; a sample whose images cannot be loaded is ``failed``."""
        results: list[Judgement | None] = [None] * len(samples)
        loaded: list[tuple[int, Image.Image, Image.Image]] = []
        for i, sample in enumerate(samples):
            try:
                loaded.append((i, *self._images(sample, root)))
            except Exception as exc:  # any unreadable image fails this sample only, with its reason
                results[i] = self._image_failure(sample, exc)
        system = self.prompts.system
        sc_requests = [
            ChatRequest([source, edited], self.prompts.sc_text(samples[i].instruction), system,
                        seed=_stable_seed(samples[i].sample_id, "sc"))
            for i, source, edited in loaded
        ]
        pq_requests = [
            ChatRequest([edited], self.prompts.pq_text(), system, seed=_stable_seed(samples[i].sample_id, "pq"))
            for i, _, edited in loaded
        ]
        # All SC requests, then all PQ: backend batches stay homogeneous (same image count, similar lengths).
        n = len(loaded)
        outcomes = self._run_calls(sc_requests + pq_requests, ["sc"] * n + ["pq"] * n)
        for k, (i, _, _) in enumerate(loaded):
            results[i] = self._combine(samples[i], outcomes[k], outcomes[n + k])
        return results  # type: ignore[return-value]

    def _images(self, sample: EditSample, root: str | Path) -> tuple[Image.Image, Image.Image]:
        cap = self.config.max_image_pixels
        source = load_image(sample.source_path(root), name=f"{sample.sample_id}: source {sample.source}")
        edited = load_image(sample.edited_path(root), name=f"{sample.sample_id}: edited {sample.edited}")
        return cap_pixels(source, cap), cap_pixels(edited, cap)

    def _run_calls(self, requests: list[ChatRequest], calls: list[CallType]) -> list[CallOutcome]:
        """Greedy first; unreadable answers re-asked with sampling up to ``parse_retries`` times."""
        outcomes = [CallOutcome(call=c) for c in calls]
        pending = list(range(len(requests)))
        for attempt in range(1 + self.config.parse_retries):
            if not pending:
                break
            temperature = 0.0 if attempt == 0 else self.config.retry_temperature
            batch = [replace(requests[i], seed=requests[i].seed + attempt) for i in pending]
            completions = self.backend.complete(batch, temperature=temperature)
            if len(completions) != len(batch):
                raise RuntimeError(f"backend {self.backend.name}: {len(completions)} answers for {len(batch)} requests")
            still_unreadable = []
            for i, done in zip(pending, completions, strict=True):
                outcome = outcomes[i]
                outcome.attempts += 1
                outcome.prompt_tokens += done.prompt_tokens
                outcome.completion_tokens += done.completion_tokens
                if done.text is None:
                    if attempt == 0:
                        outcome.status, outcome.error = "failed", done.error or "no answer"
                    else:  # the greedy answer was unreadable and the re-ask got nothing: still a parse error
                        outcome.error = f"{outcome.error}; re-ask {attempt}: {done.error}"
                    continue
                outcome.texts.append(done.text)
                outcome.parsed = parse_answer(done.text, outcome.call)
                if outcome.parsed.ok:
                    outcome.status, outcome.error = "ok", None
                else:
                    outcome.status, outcome.error = "parse_error", outcome.parsed.error
                    still_unreadable.append(i)
            pending = still_unreadable
        return outcomes

    def _common_fields(self, sc: CallOutcome, pq: CallOutcome) -> dict[str, Any]:
        """Per-call details kept on every record (same keys and types on every row, for Parquet)."""
        def scores(o: CallOutcome) -> list[float] | None:
            return list(o.parsed.scores) if o.status == "ok" else None

        return {
            "prompt_version": self.prompt_version,
            "raw_text": json.dumps({"sc": sc.texts, "pq": pq.texts}, ensure_ascii=False),
            "sc_status": sc.status, "pq_status": pq.status,
            "sc_attempts": sc.attempts, "pq_attempts": pq.attempts,
            "sc_score": scores(sc), "pq_score": scores(pq),
            "prompt_tokens": sc.prompt_tokens + pq.prompt_tokens,
            "completion_tokens": sc.completion_tokens + pq.completion_tokens,
            "parse_warnings": [f"{o.call}: {w}" for o in (sc, pq) if o.parsed for w in o.parsed.warnings],
        }

    def _combine(self, sample: EditSample, sc: CallOutcome, pq: CallOutcome) -> Judgement:
        common = self._common_fields(sc, pq)
        sc_ok, pq_ok = sc.status == "ok", pq.status == "ok"
        regions = {
            "boxes": sc.parsed.boxes if sc_ok else [],
            "region_labels": sc.parsed.region_labels if sc_ok else [],
            "region_ids": sc.parsed.region_ids if sc_ok else [],
        }
        if sc_ok and pq_ok:
            return Judgement.from_subscores(
                sample.sample_id, self.name, [*sc.parsed.scores, *pq.parsed.scores],
                reasoning=sc.parsed.reasoning, pq_reasoning=pq.parsed.reasoning, **regions, **common,
            )
        status = "failed" if "failed" in (sc.status, pq.status) else "parse_error"
        error = "; ".join(
            f"{o.call}: {o.status} after {o.attempts} attempt{'s' if o.attempts != 1 else ''}: {o.error}"
            for o in (sc, pq) if o.status != "ok"
        )
        return Judgement.failure(
            sample.sample_id, self.name, status, error, reasoning=sc.parsed.reasoning if sc_ok else "",
            pq_reasoning=pq.parsed.reasoning if pq_ok else "", **regions, **common,
        )

    def _image_failure(self, sample: EditSample, exc: Exception) -> Judgement:
        """Neither call was made: both are ``failed`` with the image error (same record shape as the others)."""
        error = f"image: {exc}"
        return self._combine(sample, CallOutcome(call="sc", error=error), CallOutcome(call="pq", error=error))


def _stable_seed(sample_id: str, call: str) -> int:
    """A per-sample, per-call seed that is the same in every process (Python's hash() is not)."""
    return zlib.crc32(f"{sample_id}/{call}".encode()) & 0x7FFFFFFF
