"""The VLM teacher: SpatialReward-8B (a merged Qwen3-VL-8B-Instruct) or any VLM judge, turned into `Judgement`s.

Protocol of the released model (arXiv 2602.07458), two calls per edit:

- **SC** — images [source, edited] + the instruction → ``edit_region`` boxes (0–1000 on the edited image),
  ``reasoning``, ``score`` = [instruction_following, consistency], each 0–25.
- **PQ** — image [edited] → ``reasoning``, ``score`` = [naturalness, artifacts], each 0–25.

Greedy decoding, up to 512 new tokens, images capped near 512×512 pixels (the model's training size).

This file holds what does not depend on where the model runs: `VLMTeacher` (prompting, parsing, the retry policy,
combining both calls into one `Judgement`). The backends live in `transformers_backend.py` and `openai_backend.py`;
what they share with the teacher (`TeacherConfig`, the request / answer records, the `Backend` protocol) in
`config.py`.

Retry policy (explicit, configurable): an answer that cannot be read is asked again ``parse_retries`` times with
sampling (``retry_temperature``, a seed fixed per sample and attempt); if none can be read the call is
``parse_error``. A call that got no answer at all (HTTP error after the backend's own retries, a generation
crash) is ``failed``. The judgement is ``ok`` only when both calls are; otherwise it carries no reward and says
which call failed and why. Nothing is ever filled with a default score.

Besides the contract fields, every record carries (same keys on every row, for Parquet): ``sc_status`` /
``pq_status``, ``sc_attempts`` / ``pq_attempts``, ``sc_score`` / ``pq_score``, token counts, ``parse_warnings``,
``parse_flags`` (``"sc:conflicting_answers"``, ``"sc:boxes_from_pixels"``, ``"pq:scores_rescaled"``: read, but
not as the prompt asked; see `parsing.FLAGS`) and ``sc_boxes_dropped`` (boxes the model gave that were not kept).

Sample images are read only inside the dataset folder unless ``allow_outside_root`` (a dataset file must not be
able to make the teacher read — and, over HTTP, upload — any image on the disk).

Example::

    teacher = VLMTeacher.from_pretrained("SpatialReward/SpatialReward-8B")   # or a local folder
    judgements = teacher.judge_batch(samples, root="data/mine")
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from spatialreward.dataset import sample_image_path
from spatialreward.images import load_image
from spatialreward.teacher.config import Backend, ChatRequest, TeacherConfig
from spatialreward.teacher.parsing import CallType, ParsedAnswer, parse_answer
from spatialreward.teacher.prompts import load_prompts
from spatialreward.teacher.transformers_backend import TransformersBackend
from spatialreward.types import EditSample, Judgement

CallStatus = Literal["ok", "parse_error", "failed"]


def cap_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale so that width × height <= ``max_pixels``, keeping the aspect ratio (never upscales)."""
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


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
        self.identity = getattr(backend, "identity", None) or backend.name  # what answers; see base.teacher_identity
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
        images = []
        for role, path in (("source", sample.source), ("edited", sample.edited)):
            name = f"{sample.sample_id}: {role}"
            file = sample_image_path(root, path, allow_outside_root=self.config.allow_outside_root, name=name)
            images.append(load_image(file, name=f"{name} {path}"))
        source, edited = images
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
                outcome.parsed = parse_answer(
                    done.text, outcome.call, image_size=requests[i].images[-1].size,  # the edited image, as sent
                    score_range=self.prompts.score_range,
                )
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
            # Read, but not as asked (parsing.FLAGS): conflicting answers, pixel boxes, another score scale.
            "parse_flags": [f"{o.call}:{f}" for o in (sc, pq) if o.status == "ok" for f in o.parsed.flags],
            "sc_boxes_dropped": sc.parsed.boxes_dropped if sc.status == "ok" else None,
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
