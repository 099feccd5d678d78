"""The teacher interface: anything that turns `EditSample`s into `Judgement`s.

The oracle teacher (exact labels for synthetic edits) and the VLM teacher (SpatialReward-8B, local or over HTTP)
share it, so the labeling pipeline, distillation and evaluation never care which one produced a label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from spatialreward.types import EditSample, Judgement


@runtime_checkable
class Teacher(Protocol):
    """Judges edits. ``name`` goes into every label record's ``teacher`` field and names the label folder."""

    name: str
    prompt_version: str
    # Optional: ``identity`` says exactly what answers (checkpoint folder, server URL + model); see `teacher_identity`.

    def judge_batch(self, samples: Sequence[EditSample], root: str | Path) -> list[Judgement]:
        """One `Judgement` per sample, in order. Image paths in samples are relative to ``root``.

        Must not raise for one bad sample: a sample that cannot be judged gets ``status='failed'`` (or
        ``'parse_error'``) with the reason in ``error``.
        """
        ...


def teacher_identity(teacher: Teacher) -> str:
    """What answers, exactly: the teacher's ``identity`` (checkpoint folder, server URL + model), else its name.

    The label folder records it, so a resumed run cannot mix labels of two teachers that share a name.
    """
    return str(getattr(teacher, "identity", None) or teacher.name)
