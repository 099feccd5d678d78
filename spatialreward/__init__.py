"""spatialreward: cheap, spatially grounded rewards for instruction-guided image editing.

The front doors: `EditSample` / `Judgement` (the records), `reward_from_subscores` (the paper's formula) and
`RewardModel` (the distilled student, scoring edits in milliseconds).
"""

from spatialreward.formula import DEFAULT_WEIGHTS, RewardWeights, reward_from_subscores
from spatialreward.types import SCHEMA_VERSION, SUBSCORE_NAMES, EditSample, Judgement

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_WEIGHTS",
    "SCHEMA_VERSION",
    "SUBSCORE_NAMES",
    "EditSample",
    "Judgement",
    "RewardModel",
    "RewardOutput",
    "RewardWeights",
    "reward_from_subscores",
]


def __getattr__(name: str):
    # The runtime pulls in torch and the student; keep `import spatialreward` light for data tools.
    if name in ("RewardModel", "RewardOutput"):
        from spatialreward import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'spatialreward' has no attribute {name!r}")
