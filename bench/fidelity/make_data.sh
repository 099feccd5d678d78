#!/bin/bash
# Data for the fidelity experiments (issue 16): a classic-recipe and a diverse-recipe training set with the same
# seed and size, and one generalisation set (its splits hold out photos, scenes, a phrasing family, failure
# families, and an evaluation-only photo pool), all labelled by the oracle, plus 4,000- and 16,000-group diverse
# sets (the data-scale runs). ~45 min on 2 cores, ~16 GB.
#   bash bench/fidelity/make_data.sh [DATA_ROOT=data]
set -euo pipefail
ROOT=${1:-data}
SR="${PYTHON:-.venv/bin/python} -m spatialreward"
$SR synth --out $ROOT/cmp_classic --groups 600 --seed 0 --recipe classic --workers 1 --no-progress
$SR synth --out $ROOT/cmp_diverse --groups 600 --seed 0 --workers 1 --no-progress
$SR synth --out $ROOT/cmp_gen --groups 240 --seed 777 --layout generalisation --workers 1 --no-progress
# 200 groups a split instead of 40: the noise floor of a split's pairwise accuracy falls by about √5 (~2 min)
$SR synth --out $ROOT/cmp_gen_1200 --groups 1200 --seed 778 --layout generalisation --workers 2 --no-progress
$SR synth --out $ROOT/cmp_diverse_4k --groups 4000 --seed 0 --workers 2 --no-progress  # ~6 min, 3.1 GB
# The same seed, so its first 4,000 groups are cmp_diverse_4k's (copy that folder here first and synth extends it).
$SR synth --out $ROOT/cmp_diverse_16k --groups 16000 --seed 0 --workers 2 --no-progress  # ~22 min, 12 GB
# synth-v3 (move / resize, same-kind decoys, relative positions, two regions, compound failures): the sets above
# are synth-v2 when built at commit cf1d2f6 (the README's results name which); these two are v3 by construction.
$SR synth --out $ROOT/cmp_v3_4k --groups 4000 --seed 0 --workers 2 --no-progress
$SR synth --out $ROOT/cmp_gen_v3 --groups 1200 --seed 779 --layout generalisation --workers 2 --no-progress
for d in cmp_classic cmp_diverse cmp_diverse_4k cmp_diverse_16k cmp_gen cmp_gen_1200 cmp_v3_4k cmp_gen_v3; do
    $SR label --teacher oracle --data $ROOT/$d
done
