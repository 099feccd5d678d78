"""Teachers: produce `Judgement`s for `EditSample`s (oracle for synthetic edits, VLM for real ones)."""

from spatialreward.teacher.base import Teacher

__all__ = ["Teacher"]
