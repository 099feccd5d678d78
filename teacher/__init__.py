"""Teachers: produce `Judgement`s for `EditSample`s (oracle for synthetic edits, VLM for real ones)."""

from spatialreward.teacher.base import Teacher
from spatialreward.teacher.oracle import OracleTeacher
from spatialreward.teacher.pipeline import LabelReport, label_dataset
from spatialreward.teacher.registry import make_teacher, parse_teacher_spec
from spatialreward.teacher.vlm import TeacherConfig, VLMTeacher

__all__ = [
    "LabelReport", "OracleTeacher", "Teacher", "TeacherConfig", "VLMTeacher", "label_dataset", "make_teacher",
    "parse_teacher_spec",
]
