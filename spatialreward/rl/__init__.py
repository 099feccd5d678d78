"""Rewards in each RL framework's own call shape, in-process (`RewardModel`) or through the server.

One module per framework: `flow_grpo` (a ``multi_score``-style ``fn(device)`` factory), `flow_factory`
(``PointwiseRewardModel`` / groupwise ``__call__``), `verl_omni` (async per-sample ``compute_score``), `trl`
(``reward_func(prompts, completions, **columns)``). All of them score through `EditScorer`: a failed edit is NaN
(or None where the framework reads None as "no reward"), never 0 or 0.5. ``EditScorer(..., fallback=TeacherFallback(
teacher))`` sends the edits the student flags as unlike its training to the teacher (`fallback`).
"""

from spatialreward.rl.fallback import TeacherFallback
from spatialreward.rl.scorer import EditScorer

__all__ = ["EditScorer", "TeacherFallback"]
