"""A checkout's root on sys.path makes `kernels/` importable as a top-level ``kernels``: it must stay one package.

transformers probes for Hugging Face's ``kernels`` package by importing ``kernels``; from the repo root that found
our folder, ran it a second time under another name and registered every custom op again, and a distillation run
from the README's commands then died inside ``roi_align_tokens`` (``ValueError: vector::reserve``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
import transformers.modeling_utils  # probes for (and imports) a top-level `kernels`
import kernels
import spatialreward.kernels as ours
copies = sorted(m for m in sys.modules if m.startswith("kernels."))
assert kernels is ours, (kernels, ours)
assert not copies, copies
from transformers.utils import is_kernels_available
assert not is_kernels_available(), "our kernels folder passed for Hugging Face's `kernels` package"
print("one package")
"""


def test_top_level_kernels_is_the_package_not_a_second_copy():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "one package" in result.stdout
