#!/bin/bash
# Issue 16 item 4: held-out quality against the number of distinct training sources. nano is distilled for STEPS
# steps (same seed, same schedule) on the first N train groups of the 4,000-group diverse set (every group has its
# own source image: a random crop of a training photo or a procedural scene), for each N in SIZES; each run gets the
# generalisation report on the one generalisation set; learning_curve.py gathers them into
# docs/results/learning_curve_sources.{json,png}.
#   STEPS=1000 SIZES="100 400 1600 3200" bash bench/fidelity/learning_curve.sh [DATA_ROOT=data] [RUNS=runs/cmp]
set -euo pipefail
ROOT=${1:-data}; RUNS=${2:-runs/cmp}; STEPS=${STEPS:-1000}; SIZES=${SIZES:-100 400 1600 3200}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
REPORTS=()
for n in $SIZES; do
  $SR distill --preset nano --data $ROOT/cmp_diverse_4k --out $RUNS/nano_curve_$n --max-steps $STEPS --seed 0 \
      --max-train-groups $n --max-eval-groups 100 --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
  $SR eval --model $RUNS/nano_curve_$n --data $ROOT/cmp_gen --report generalisation \
      --out docs/results/generalisation_curve_${STEPS}steps_$n.json
  REPORTS+=(docs/results/generalisation_curve_${STEPS}steps_$n.json)
done
${PYTHON:-.venv/bin/python} bench/fidelity/learning_curve.py "${REPORTS[@]}" --sources $SIZES --steps $STEPS \
    --out docs/results/learning_curve_sources.json
