"""Shared test set-up: CPU only, quiet threads, fixtures that several test files use."""

from __future__ import annotations

import os

import torch

# Without a GPU the kernel tests run Triton in its interpreter on the CPU; it must be set before triton is imported
# anywhere. On a GPU box the compiled kernels run (the GPU-marked tests need them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
