#!/usr/bin/env bash
# One command for a GPU box: install, check the compiled Triton kernels against the reference (fp32/fp16/bf16,
# forward + backward), then benchmark them against torchvision / SDPA / FlexAttention.
#
#   bash bench/gpu_kernels.sh                 # full sweep; JSON + logs into $OUT (or bench/results)
#   BENCH_ARGS="--quick" bash bench/gpu_kernels.sh
#   BENCH_ARGS="--quick --no-flex --dtype bf16" bash bench/gpu_kernels.sh
#
# Expects python3 with torch >= 2.11 and triton >= 3.6 already installed (the box may have no network).
# Exit status: non-zero if any correctness check fails, or if our kernels fail in the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)  # absolute: some steps run from tests/
# tests/conftest.py defaults TRITON_INTERPRET=1 for CPU boxes; here we want the compiled kernels.
export TRITON_INTERPRET=0

"$PY" - <<'EOF'
import torch, triton
assert torch.cuda.is_available(), "no CUDA device visible: this script is for the GPU box"
print(f"torch {torch.__version__}  triton {triton.__version__}  {torch.cuda.get_device_name()}")
EOF

# ---- install (editable, no deps: the box has torch + triton; nothing else is needed for the kernels) --------
if ! "$PY" -m pip install --no-deps --no-build-isolation -q -e . 2>"$OUT_DIR/pip_install.log"; then
  echo "pip install -e . failed (see $OUT_DIR/pip_install.log); using a source shim instead"
fi
# (imports are tried from /tmp: from the repo root, ./spatialreward would shadow the installed mapping)
if ! (cd /tmp && "$PY" -c "import spatialreward.kernels") 2>/dev/null; then
  # `import spatialreward` needs pydantic/numpy; the kernels need neither. A shim package that only maps
  # spatialreward.kernels -> ./kernels keeps the GPU check independent of the rest of the project.
  SHIM=$(mktemp -d)
  mkdir -p "$SHIM/spatialreward"
  : >"$SHIM/spatialreward/__init__.py"
  ln -s "$PWD/kernels" "$SHIM/spatialreward/kernels"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  (cd /tmp && "$PY" -c "import spatialreward.kernels") || { echo "cannot import spatialreward.kernels"; exit 1; }
fi

# ---- correctness: compiled Triton vs reference on the GPU ----------------------------------------------------
status=0
"$PY" bench/kernels.py --check 2>&1 | tee "$OUT_DIR/gpu_kernels_check.txt" || status=1

if "$PY" -c "import pytest, torchvision" 2>/dev/null; then
  # the GPU-marked tests too; a skipped GPU test here means something is misconfigured, so it counts as a failure
  # run from tests/ so ./spatialreward (which needs pydantic) cannot shadow the shim
  (cd tests && "$PY" -m pytest test_kernels_roi_align.py test_kernels_region_attention.py -m gpu -q -rs \
      -p no:cacheprovider) 2>&1 | tee "$OUT_DIR/gpu_kernels_pytest.txt" || status=1
  if grep -qE "[0-9]+ skipped" "$OUT_DIR/gpu_kernels_pytest.txt"; then
    echo "GPU tests were skipped on a GPU box: failing"; status=1
  fi
else
  echo "pytest or torchvision missing: GPU pytest skipped (bench/kernels.py --check above covers the same ground)"
fi

# ---- benchmark ------------------------------------------------------------------------------------------------
# shellcheck disable=SC2086 - BENCH_ARGS is a list of flags
"$PY" bench/kernels.py --out "$OUT_DIR" ${BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/gpu_kernels_bench.txt" || status=1
exit $status
