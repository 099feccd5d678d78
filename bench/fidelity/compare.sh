#!/bin/bash
# The matched comparison (issue 16): nano distilled for STEPS steps (same seed) on the classic vs the diverse set,
# each evaluated with the generalisation report on the one generalisation set and on its own held-out split.
# Writes docs/results/generalisation_{classic,diverse}[_own_heldout].{json,png}.
#   STEPS=800 bash bench/fidelity/compare.sh [DATA_ROOT=data] [RUNS=runs/cmp]
# PRESET (default nano) picks the student; reports in the README whose command names no PRESET were made with
# PRESET=nano_v1 (the 112-px nano before pixel detail), which reproduces them.
set -euo pipefail
ROOT=${1:-data}; RUNS=${2:-runs/cmp}; STEPS=${STEPS:-800}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
for r in classic diverse; do
  $SR distill --preset ${PRESET:-nano} --data $ROOT/cmp_$r --out $RUNS/nano_$r --max-steps $STEPS --seed 0 \
      --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
  $SR eval --model $RUNS/nano_$r --data $ROOT/cmp_gen --report generalisation \
      --out docs/results/generalisation_$r.json
  $SR eval --model $RUNS/nano_$r --data $ROOT/cmp_$r --report generalisation \
      --out docs/results/generalisation_${r}_own_heldout.json
done
