"""Shared test set-up: CPU only, quiet threads, fixtures that several test files use."""

from __future__ import annotations

import os

# Kernel tests run Triton in its interpreter on the CPU; it must be set before triton is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
