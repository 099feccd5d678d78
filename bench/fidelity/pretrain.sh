#!/bin/bash
# Issue 16, item 6: does self-supervised change pretraining help? nano with the full-resolution quality map
# (--quality-scale 2) pretrained for PRE_MINUTES on procedural pairs (`spatialreward pretrain`, training sources only),
# then distilled for STEPS steps from it (`distill --init-from`), against the same distillation from scratch
# (generalisation_diverse_q2.json, same data, seed and steps; BASELINE=1 reruns it here).
# Writes docs/results/generalisation_diverse_q2_pre${PRE_MINUTES}min[_own_heldout].{json,png} and the
# pretraining report docs/results/pretrain_q2_${PRE_MINUTES}min.json.
#   PRE_MINUTES=15 STEPS=800 bash bench/fidelity/pretrain.sh [DATA_ROOT=data] [RUNS=runs/cmp]
# PRESET (default nano) picks the student; reports in the README whose command names no PRESET were made with
# PRESET=nano_v1 (the 112-px nano before pixel detail), which reproduces them.
set -euo pipefail
ROOT=${1:-data}; RUNS=${2:-runs/cmp}; PRE=${PRE_MINUTES:-15}; STEPS=${STEPS:-800}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
STUDENT="--preset ${PRESET:-nano} --quality-scale 2 --quality-dim 32"
cat /proc/loadavg
$SR pretrain $STUDENT --out $RUNS/pre_q2_${PRE}min --max-minutes $PRE --seed 0 --no-progress --num-threads 2 --overwrite
cp $RUNS/pre_q2_${PRE}min/pretrain.json docs/results/pretrain_q2_${PRE}min.json
cat /proc/loadavg
$SR distill $STUDENT --init-from $RUNS/pre_q2_${PRE}min --data $ROOT/cmp_diverse --out $RUNS/nano_diverse_q2_pre${PRE}min \
    --max-steps $STEPS --seed 0 --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
$SR eval --model $RUNS/nano_diverse_q2_pre${PRE}min --data $ROOT/cmp_gen --report generalisation \
    --out docs/results/generalisation_diverse_q2_pre${PRE}min.json
$SR eval --model $RUNS/nano_diverse_q2_pre${PRE}min --data $ROOT/cmp_diverse --report generalisation \
    --out docs/results/generalisation_diverse_q2_pre${PRE}min_own_heldout.json
if [ "${BASELINE:-0}" = 1 ]; then
  $SR distill $STUDENT --data $ROOT/cmp_diverse --out $RUNS/nano_diverse_q2 --max-steps $STEPS --seed 0 \
      --eval-every-minutes 0 --no-progress --num-threads 2 --overwrite
  $SR eval --model $RUNS/nano_diverse_q2 --data $ROOT/cmp_gen --report generalisation \
      --out docs/results/generalisation_diverse_q2.json
fi
cat /proc/loadavg
