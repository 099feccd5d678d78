"""``text.onnx``: the frozen instruction encoder (all-MiniLM-L6-v2) as an ONNX graph, with its tokenizer beside it.

    text.onnx        input_ids int64 [B, T], attention_mask int64 [B, T]  ->  text_embedding float32 [B, 384]
    tokenizer.json   the encoder's own fast-tokenizer file (the ``tokenizers`` library reads it)

Mean pooling over the attention mask and L2 normalisation are inside the graph, so the graph's output is exactly
what `student.text.InstructionEncoder` hands the student (sentence-transformers' Transformer → Pooling(mean) →
Normalize). Tokenisation stays outside (string ops have no place in an ONNX graph): `OnnxTextEncoder` runs the
copied ``tokenizer.json`` with the settings sentence-transformers uses (truncate to ``max_seq_length`` = 256
tokens, pad to the longest in the batch), which ``export.json`` records; the file's own 128-token truncation and
fixed padding are overridden by them. Every file is pinned by sha256 in ``export.json`` and checked at load, so
a deployment embeds instructions with ONNX Runtime + ``tokenizers`` and needs neither torch's sentence encoder nor
sentence-transformers at scoring time.

The graph is the same for every student trained against this encoder: it is exported once per process (per opset)
and copied into each export folder.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialreward.export.onnx_export import ExportError, sha256_file

TEXT_FILE = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "text_embedding"


class TextEncoderError(ExportError):
    """The exported text encoder's files are missing or not the ones ``export.json`` pins."""


class TextGraph(nn.Module):
    """MiniLM + masked mean pooling + L2 normalisation: ``(input_ids, attention_mask) -> [B, 384]``, the same
    arithmetic as sentence-transformers' Pooling (mean, ``clamp(min=1e-9)`` on the token count) and Normalize."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def _sentence_transformer():
    from spatialreward.student.text import _load_minilm

    return _load_minilm("cpu")


def tokenizer_settings(max_seq_length: int) -> dict[str, Any]:
    """What `OnnxTextEncoder` applies to ``tokenizer.json`` (recorded in ``export.json``)."""
    return {"library": "tokenizers", "truncation": {"max_length": max_seq_length, "strategy": "longest_first"},
            "padding": {"strategy": "batch_longest", "pad_id": 0, "pad_token": "[PAD]", "direction": "right"},
            "add_special_tokens": True,
            "note": "normaliser (BERT, lowercasing), pre-tokeniser and [CLS]/[SEP] template as tokenizer.json defines "
                    "them; this truncation and padding replace the file's own (128 tokens, fixed padding), as "
                    "sentence-transformers does"}


_EXPORTED: dict[int, Path] = {}  # opset -> text.onnx exported in this process


def _cache_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="spatialreward-text-onnx-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def export_text_encoder(out_dir: Path, *, opset: int, log=print) -> dict[str, Any]:
    """Write ``text.onnx`` + ``tokenizer.json`` into ``out_dir`` and return the ``export.json`` entry for them."""
    from spatialreward.student.text import MINILM_DIM, MINILM_NAME, MINILM_SHA256, _minilm_dir

    model_dir = _minilm_dir()
    model = _sentence_transformer()  # verifies the pinned files
    max_len = int(model.max_seq_length)
    if opset not in _EXPORTED:
        log(f"exporting {TEXT_FILE} ({MINILM_NAME}, opset {opset}) …")
        path = _cache_dir() / TEXT_FILE
        _export_graph(TextGraph(model[0].auto_model).eval(), path, opset=opset, max_len=max_len)
        _EXPORTED[opset] = path
    shutil.copyfile(_EXPORTED[opset], out_dir / TEXT_FILE)
    shutil.copyfile(model_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    files = {TEXT_FILE: sha256_file(out_dir / TEXT_FILE), TOKENIZER_FILE: sha256_file(out_dir / TOKENIZER_FILE)}
    return {
        "name": MINILM_NAME, "dim": MINILM_DIM, "exported": True, "file": TEXT_FILE, "tokenizer": TOKENIZER_FILE,
        "sha256": files, "max_seq_length": max_len, "tokenizer_settings": tokenizer_settings(max_len),
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "tokens"]} for n in TEXT_INPUTS},
        "outputs": {TEXT_OUTPUT: {"dtype": "float32", "shape": ["batch", MINILM_DIM]}},
        "precision": "fp32", "pooling": "mean over attention_mask, then L2 normalisation (inside the graph)",
        "weights_sha256": MINILM_SHA256["model.safetensors"],  # the pinned MiniLM weights text.onnx holds
    }


def _export_graph(graph: TextGraph, path: Path, *, opset: int, max_len: int) -> None:
    import onnx

    ids = torch.tensor([[101, 7632, 2088, 102, 0, 0], [101, 2191, 1996, 3712, 2417, 102]], dtype=torch.int64)
    mask = (ids != 0).long()
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.export.Dim("tokens", min=2, max=max_len)  # [CLS] … [SEP]: never fewer than two
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (ids, mask), dynamo=True, opset_version=opset, input_names=list(TEXT_INPUTS),
            output_names=[TEXT_OUTPUT], dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}), verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.save(model, str(path))


# ---------------------------------------------------------------------------------------------------------------
# Running it: ONNX Runtime + tokenizers
# ---------------------------------------------------------------------------------------------------------------


def verify_text_files(directory: Path, entry: dict) -> None:
    """Each file ``entry["sha256"]`` pins exists in ``directory`` with that sha256; else `TextEncoderError`
    naming the file."""
    for name, expected in entry["sha256"].items():
        path = directory / name
        if not path.is_file():
            raise TextEncoderError(f"{path}: missing (export.json lists it for the text encoder; re-export the folder)")
        got = sha256_file(path)
        if got != expected:
            raise TextEncoderError(
                f"{path}: sha256 {got[:16]}… is not the {expected[:16]}… export.json pins (the file was changed "
                "after export); re-export the folder with `spatialreward export onnx --overwrite`"
            )


class OnnxTextEncoder:
    """``encode(list[str]) -> [B, 384]`` float32 on CPU from ``text.onnx`` + ``tokenizer.json`` with an LRU cache
    keyed by the exact instruction string (a GRPO group's instruction is embedded once)."""

    def __init__(self, directory: str | Path, entry: dict, session_options=None, providers=None,
                 cache_size: int = 200_000, batch_size: int = 128):
        from tokenizers import Tokenizer

        directory = Path(directory)
        verify_text_files(directory, entry)
        self.name, self.dim = entry["name"], int(entry["dim"])
        settings = entry["tokenizer_settings"]
        self.tokenizer = Tokenizer.from_file(str(directory / entry["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=int(settings["truncation"]["max_length"]))
        pad = settings["padding"]
        self.tokenizer.enable_padding(pad_id=int(pad["pad_id"]), pad_token=pad["pad_token"], direction=pad["direction"])
        self.add_special_tokens = bool(settings["add_special_tokens"])
        self._graph = directory / entry["file"]
        self._session_options, self._providers = session_options, providers or ["CPUExecutionProvider"]
        self._session = None  # made on the first string to embed (a caller may inject its own encoder)
        self.cache_size, self.batch_size = cache_size, batch_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.calls = 0  # strings sent through the network

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self._graph), self._session_options, providers=self._providers)
        return self._session

    def _embed(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer.encode_batch(texts[start:start + self.batch_size],
                                                add_special_tokens=self.add_special_tokens)
            ids = np.asarray([e.ids for e in batch], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in batch], dtype=np.int64)
            (emb,) = self.session.run([TEXT_OUTPUT], {"input_ids": ids, "attention_mask": mask})
            rows.append(torch.from_numpy(emb))
        self.calls += len(texts)
        return torch.cat(rows).float()

    def encode(self, instructions: Sequence[str]) -> torch.Tensor:
        for i, text in enumerate(instructions):
            if not isinstance(text, str):
                raise TypeError(f"instruction {i} is {type(text).__name__}, expected str")
        if not instructions:
            return torch.zeros(0, self.dim)
        missing = list(dict.fromkeys(t for t in instructions if t not in self._cache))
        fresh = dict(zip(missing, self._embed(missing))) if missing else {}
        out = torch.stack([fresh[t] if t in fresh else self._cache[t] for t in instructions])
        for text, vec in fresh.items():
            self._cache[text] = vec
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out  # [B, 384]

