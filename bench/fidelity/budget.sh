#!/bin/bash
# Issue 16's budget: nano on the diverse set for MINUTES minutes of training on this machine (one recipe for every
# split), then the generalisation report. Writes docs/results/generalisation_diverse_${MINUTES}min${TAG}.{json,png}
# (and _own_heldout). FLAGS adds student / distill flags, TAG names the variant:
#   MINUTES=30 bash bench/fidelity/budget.sh [DATA_ROOT=data] [RUNS=runs/cmp]
#   MINUTES=30 FLAGS="--quality-scale 2" TAG=_q2 bash bench/fidelity/budget.sh
#   MINUTES=30 TRAIN=cmp_diverse_4k TAG=_4k bash bench/fidelity/budget.sh   # another training set (make_data.sh)
# GEN2 (e.g. cmp_gen_1200, 200 groups a split) adds a report on a second generalisation set: ..._${GEN2}.json
# PRESET (default nano) picks the student; reports in the README whose command names no PRESET were made with
# PRESET=nano_v1 (the 112-px nano before pixel detail), which reproduces them.
set -euo pipefail
ROOT=${1:-data}; RUNS=${2:-runs/cmp}; MINUTES=${MINUTES:-30}; TAG=${TAG:-}; TRAIN=${TRAIN:-cmp_diverse}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
NAME=diverse_${MINUTES}min${TAG}
cat /proc/loadavg
$SR distill --preset ${PRESET:-nano} ${FLAGS:-} --data $ROOT/$TRAIN --out $RUNS/nano_$NAME --max-minutes $MINUTES \
    --seed 0 --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
cat /proc/loadavg
tail -n 1 $RUNS/nano_$NAME/metrics.jsonl > docs/results/generalisation_${NAME}_last_step.json  # steps it made
$SR eval --model $RUNS/nano_$NAME --data $ROOT/cmp_gen --report generalisation \
    --out docs/results/generalisation_$NAME.json
$SR eval --model $RUNS/nano_$NAME --data $ROOT/$TRAIN --report generalisation \
    --out docs/results/generalisation_${NAME}_own_heldout.json
if [ -n "${GEN2:-}" ]; then
    $SR eval --model $RUNS/nano_$NAME --data $ROOT/$GEN2 --report generalisation \
        --out docs/results/generalisation_${NAME}_${GEN2}.json
fi
