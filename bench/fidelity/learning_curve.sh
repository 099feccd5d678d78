#!/bin/bash
# Issue 16 item 4: held-out quality against the number of distinct training sources. nano is distilled for STEPS
# steps (same seed, same schedule) on the first N train groups of the 4,000-group diverse set (every group has its
# own source image: a random crop of a training photo or a procedural scene), for each N in SIZES; each run gets the
# generalisation report on the one generalisation set; learning_curve.py gathers them into
# docs/results/learning_curve_sources.{json,png}.
#   STEPS=1000 SIZES="100 400 1600 3200" bash bench/fidelity/learning_curve.sh [DATA_ROOT=data] [RUNS=runs/cmp]
# PRESET (default nano) picks the student; reports in the README whose command names no PRESET were made with
# PRESET=nano_v1 (the 112-px nano before pixel detail), which reproduces them.
# A screen of a variant at one size: FLAGS adds student / distill flags, TAG names it (its reports get the suffix and
# the curve files are left alone), e.g. the pixel-detail screen:
#   PRESET=nano_v1 STEPS=800 SIZES=3200 TAG=_light_detail FLAGS="--cross-mlp pooled --change-mlp-ratio 1
#       --change-depth 0 --pixel-stats --pixel-detail --quality-scale 2 --quality-dim 0" bash bench/fidelity/learning_curve.sh
set -euo pipefail
ROOT=${1:-data}; RUNS=${2:-runs/cmp}; STEPS=${STEPS:-1000}; SIZES=${SIZES:-100 400 1600 3200}; TAG=${TAG:-}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
REPORTS=()
for n in $SIZES; do
  $SR distill --preset ${PRESET:-nano} ${FLAGS:-} --data $ROOT/cmp_diverse_4k --out $RUNS/nano_curve_$n$TAG --max-steps $STEPS --seed 0 \
      --max-train-groups $n --max-eval-groups 100 --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
  $SR eval --model $RUNS/nano_curve_$n$TAG --data $ROOT/cmp_gen --report generalisation \
      --out docs/results/generalisation_curve_${STEPS}steps_$n$TAG.json
  REPORTS+=(docs/results/generalisation_curve_${STEPS}steps_$n$TAG.json)
done
[ -n "$TAG" ] && exit 0  # a screen: no curve
${PYTHON:-.venv/bin/python} bench/fidelity/learning_curve.py "${REPORTS[@]}" --sources $SIZES --steps $STEPS \
    --out docs/results/learning_curve_sources.json
