"""Core records: `EditSample` (what is judged) and `Judgement` (what a teacher says about it).

Both are pydantic models so that every record read from JSONL/Parquet is validated field by field, and a bad
record yields an error naming the field and the reason. Field names are the label-record contract of
`shared/ARCHITECTURE.md`; extra fields are kept (``extra="allow"``).

Frames: boxes are ``(x1, y1, x2, y2)`` in 0–1000 normalised coordinates on the *edited* image; sub-scores are
``[instruction_following, consistency, naturalness, artifacts]``, each 0–25, higher is better.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
SUBSCORE_NAMES = ("instruction_following", "consistency", "naturalness", "artifacts")
# What a novelty check compares with the training edits, in `RewardOutput.novelty_parts` column order
# (student.novelty; "pixels" only for students with pixel detail)
NOVELTY_VIEWS = ("instruction", "evidence", "pixels")
SCORE_MAX = 25.0  # every sub-score is in [0, SCORE_MAX]
BOX_SCALE = 1000.0  # boxes are in [0, BOX_SCALE] on both axes
WHOLE_IMAGE = (0.0, 0.0, BOX_SCALE, BOX_SCALE)  # the box of the whole image: the region of a global edit

Status = Literal["ok", "parse_error", "failed"]


class EditSample(BaseModel):
    """One instruction-guided edit to judge.

    ``source`` and ``edited`` are image paths, relative to the dataset folder (or absolute). ``group_id`` ties the
    edits of one source + instruction together (a GRPO group). ``meta`` holds anything else: for synthetic samples,
    ``meta["truth"]`` carries the exact ground truth the oracle teacher reads.
    """

    model_config = ConfigDict(extra="allow")

    sample_id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    edited: str = Field(min_length=1)
    instruction: str
    group_id: str = Field(min_length=1)
    split: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def source_path(self, root: str | Path) -> Path:
        return resolve_path(root, self.source)

    def edited_path(self, root: str | Path) -> Path:
        return resolve_path(root, self.edited)


def resolve_path(root: str | Path, path: str | Path) -> Path:
    """``path`` as written when absolute, else relative to the folder ``root`` (no check: see
    `dataset.sample_image_path` for paths read from a dataset file)."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


class Judgement(BaseModel):
    """A teacher's verdict on one `EditSample`: edit regions, four sub-scores, reward, reasoning.

    ``status`` is ``ok`` only when boxes and all four sub-scores were read; otherwise ``parse_error`` (the model
    answered but we could not read it) or ``failed`` (no usable answer). A judgement that is not ``ok`` carries
    ``reward=None`` — never a made-up default — and keeps ``error`` and ``raw_text`` for debugging.
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    sample_id: str = Field(min_length=1)
    teacher: str
    prompt_version: str = ""
    status: Status
    error: str | None = None
    boxes: list[list[float]] = Field(default_factory=list)
    subscores: list[float] | None = None
    reward: float | None = None
    reasoning: str = ""
    raw_text: str = ""

    @field_validator("boxes")
    @classmethod
    def _check_boxes(cls, boxes: list[list[float]]) -> list[list[float]]:
        for i, b in enumerate(boxes):
            if len(b) != 4:
                raise ValueError(f"box {i} has {len(b)} numbers, expected 4 (x1, y1, x2, y2)")
            if not all(math.isfinite(v) and -1e-6 <= v <= BOX_SCALE + 1e-6 for v in b):
                raise ValueError(f"box {i} = {b} is outside 0–1000")
            if b[2] < b[0] or b[3] < b[1]:
                raise ValueError(f"box {i} = {b} has x2 < x1 or y2 < y1")
        return boxes

    @field_validator("subscores")
    @classmethod
    def _check_subscores(cls, s: list[float] | None) -> list[float] | None:
        if s is None:
            return s
        if len(s) != 4:
            raise ValueError(f"subscores has {len(s)} values, expected 4 {SUBSCORE_NAMES}")
        for name, v in zip(SUBSCORE_NAMES, s):
            if not (math.isfinite(v) and 0.0 <= v <= SCORE_MAX):
                raise ValueError(f"{name} = {v} is outside 0–25")
        return s

    @model_validator(mode="after")
    def _check_status(self) -> Judgement:
        if self.status == "ok":
            if self.subscores is None:
                raise ValueError("status 'ok' needs 4 subscores")
            if self.reward is None or not math.isfinite(self.reward):
                raise ValueError("status 'ok' needs a finite reward")
        elif self.reward is not None:
            raise ValueError(f"status '{self.status}' must carry reward=null, got {self.reward}")
        return self

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_subscores(
        cls, sample_id: str, teacher: str, subscores: list[float], boxes: list[list[float]], **fields: Any
    ) -> Judgement:
        """An ``ok`` judgement whose reward is computed by the shared formula (default weights)."""
        from spatialreward.formula import reward_from_subscores

        s = [float(v) for v in subscores]
        return cls(
            sample_id=sample_id, teacher=teacher, status="ok", subscores=s, boxes=boxes,
            reward=float(reward_from_subscores(s)), **fields,
        )

    @classmethod
    def failure(cls, sample_id: str, teacher: str, status: Status, error: str, **fields: Any) -> Judgement:
        """A judgement that carries no reward: ``parse_error`` or ``failed`` with its reason."""
        if status == "ok":
            raise ValueError("failure() needs status 'parse_error' or 'failed'")
        return cls(sample_id=sample_id, teacher=teacher, status=status, error=error, reward=None, **fields)
