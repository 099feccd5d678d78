"""TRL (github.com/huggingface/trl): a ``reward_func(prompts, completions, **columns)`` for `GRPOTrainer`.

TRL calls each reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` where every
dataset column other than ``prompt`` arrives as a list (repeated per generation), plus ``trainer_state``,
``log_extra`` and ``log_metric``; it reads one float per completion and treats ``None`` as "no reward" (NaN). For
edit tasks the images live in columns: the source in ``source_column`` and the edited image either in
``edited_column`` or built from the completion by ``render(completion, **row)`` (e.g. a tool-using policy whose
completion is an edit program). The instruction is ``instruction_column`` when present, else the prompt (its last
user message, for conversational prompts).

    from spatialreward.rl.trl import SpatialRewardFunc
    trainer = GRPOTrainer(model=..., reward_funcs=[SpatialRewardFunc(url="http://127.0.0.1:23456")], ...)

A failed edit returns ``None``, which TRL turns into NaN and excludes: never a made-up reward.
"""

from __future__ import annotations

import math

from spatialreward.rl.scorer import EditScorer


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):  # conversational: [{"role": ..., "content": str | [{"type": "text", ...}]}]
        for message in reversed(prompt):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(prompt)


class SpatialRewardFunc:
    """A TRL reward function; ``__name__`` is what TRL logs it under (``rewards/spatialreward``)."""

    __name__ = "spatialreward"

    def __init__(self, *, source_column: str = "source_image", edited_column: str | None = "edited_image",
                 instruction_column: str | None = "instruction", render=None, scorer: EditScorer | None = None,
                 **scorer_kwargs):
        self.source_column, self.edited_column = source_column, edited_column
        self.instruction_column, self.render = instruction_column, render
        self.scorer = scorer or EditScorer(**scorer_kwargs)

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        n = len(completions)
        if self.source_column not in columns:
            raise ValueError(f"the dataset has no {self.source_column!r} column (columns: "
                             f"{sorted(k for k in columns if k not in ('trainer_state', 'log_extra', 'log_metric'))})")
        sources = columns[self.source_column]
        if self.render is not None:
            rows = [{k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == n} for i in range(n)]
            editeds = [self.render(completions[i], **rows[i]) for i in range(n)]
        elif self.edited_column in columns:
            editeds = columns[self.edited_column]
        else:
            raise ValueError(f"no {self.edited_column!r} column and no render=: give the edited images a column or a "
                             "function that renders a completion")
        if self.instruction_column and self.instruction_column in columns:
            instructions = [str(t) for t in columns[self.instruction_column]]
        else:
            instructions = [_prompt_text(p) for p in prompts]
        rewards, infos = self.scorer.score(sources, editeds, instructions)
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric("spatialreward/failed", float(sum(not i["ok"] for i in infos)))
        return [None if math.isnan(r) else float(r) for r in rewards]
