"""Synthetic edit benchmark: GRPO groups of edits on real photos (scikit-image), with exact ground truth.

The embedded default of spatialreward (no model hub needed): `generate_dataset` writes a dataset folder that the
oracle teacher (`spatialreward.teacher.oracle`) labels exactly; `make_group` builds one group in memory. Modules,
one job each: `photos` (sources and the held-out split), `regions`, `objects`, `textures`, `operations` (six edit
operations), `instructions` (templates), `candidates` (quality kinds), `artifacts` (degradations), `truth`
(measures → sub-scores), `generate` (groups, files, processes, progress), and for the diverse recipe (the
default): `failures` (artifact and over-edit families, holdable out), `scenes` (procedurally rendered sources) and
the phrasing families of `instructions`; `photos.EVAL_POOL_PHOTOS` are matplotlib's images, evaluation-only.
"""

from spatialreward.synth.candidates import ALL_KINDS, KINDS
from spatialreward.synth.failures import ARTIFACT_FAMILIES, OVER_EDIT_FAMILIES, FailurePools
from spatialreward.synth.generate import (GENERALISATION_SPLITS, Candidate, Group, SynthConfig, SynthReport,
                                          generate_dataset, make_group)
from spatialreward.synth.operations import OPERATIONS

__all__ = [
    "ALL_KINDS",
    "ARTIFACT_FAMILIES",
    "GENERALISATION_SPLITS",
    "OVER_EDIT_FAMILIES",
    "FailurePools",
    "KINDS",
    "OPERATIONS",
    "Candidate",
    "Group",
    "SynthConfig",
    "SynthReport",
    "generate_dataset",
    "make_group",
]
