"""The transformers backend: `AutoProcessor` + `AutoModelForImageTextToText` (Qwen2.5-VL, Qwen3-VL, ...) on this
machine, batched with left padding, greedy by default.

torch and transformers are imported when a backend is built, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spatialreward.teacher.config import ChatRequest, Completion, TeacherLoadError


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


def vlm_identity(model: str | Path) -> str:
    """What answers, exactly: ``vlm:`` + the resolved folder of a local checkpoint, or + the hub id.

    Two checkpoints that share a folder name (``/a/ckpt-1000``, ``/b/ckpt-1000``) share a `vlm_name` but not this.
    """
    return f"vlm:{Path(model).resolve() if Path(model).is_dir() else model}"


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
        self.identity = vlm_identity(model)

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
