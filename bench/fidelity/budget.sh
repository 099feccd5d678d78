#!/bin/bash
# Issue 16's budget: nano on the diverse set for MINUTES minutes of training on this machine (one recipe for every
# split), then the generalisation report. Writes docs/results/generalisation_diverse_${MINUTES}min.{json,png}.
#   MINUTES=30 bash bench/fidelity/budget.sh [DATA_ROOT=data] [RUNS=runs/cmp]
set -euo pipefail
ROOT=${1:-data}; RUNS=${2:-runs/cmp}; MINUTES=${MINUTES:-30}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
cat /proc/loadavg
$SR distill --preset nano --data $ROOT/cmp_diverse --out $RUNS/nano_diverse_${MINUTES}min --max-minutes $MINUTES \
    --seed 0 --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
cat /proc/loadavg
$SR eval --model $RUNS/nano_diverse_${MINUTES}min --data $ROOT/cmp_gen --report generalisation \
    --out docs/results/generalisation_diverse_${MINUTES}min.json
$SR eval --model $RUNS/nano_diverse_${MINUTES}min --data $ROOT/cmp_diverse --report generalisation \
    --out docs/results/generalisation_diverse_${MINUTES}min_own_heldout.json
