"""Triton kernels with plain-PyTorch references, registered as torch custom ops (``torch.ops.spatialreward.*``).

* `roi_align` / `roi_align_tokens` / `RoIAlign`: RoIAlign with `torchvision.ops.roi_align` semantics, for NCHW maps
  and for ViT tokens ``[B, N, C]`` (channels-last output, no permute).
* `region_attention`: attention whose keys are restricted to (softly) weighted regions; cost scales with the region.
* `set_backend` / `get_backend` / `use_backend`: Triton on CUDA ("auto"), or force "triton" / "reference".
* `spatialreward.kernels.onnx.custom_translation_table()`: ONNX translations for ``torch.onnx.export(dynamo=True)``.

Importing this package registers the ops; it launches nothing.
"""

if __name__ != "spatialreward.kernels":
    # Run from a checkout (``python -m spatialreward`` in the repo root, pytest's pythonpath), this folder is also
    # importable as a top-level ``kernels``, and transformers imports ``kernels`` to probe for Hugging Face's package
    # of that name. A second copy would register every custom op again over the first (training then failed inside
    # the op); be the one real package instead.
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("spatialreward.kernels")
else:
    from ._backend import HAS_TRITON, get_backend, set_backend, use_backend
    from .region_attention import region_attention, region_attention_reference
    from .roi_align import (
        RoIAlign,
        RoIBoxesError,
        roi_align,
        roi_align_reference,
        roi_align_tokens,
        roi_align_tokens_reference,
    )

__all__ = [
    "HAS_TRITON",
    "RoIAlign",
    "RoIBoxesError",
    "get_backend",
    "region_attention",
    "region_attention_reference",
    "roi_align",
    "roi_align_reference",
    "roi_align_tokens",
    "roi_align_tokens_reference",
    "set_backend",
    "use_backend",
]
