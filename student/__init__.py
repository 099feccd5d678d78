"""The dual-stream ViT student, its losses, distillation loop and metrics.

Front doors: `build_student` / `Student.from_pretrained` (the network), `list_presets` / `preset_config` (sizes),
`DistillConfig` + `Distiller` (training), `evaluate_model_dir` (what ``spatialreward eval`` runs). Scoring edits
from user code goes through `spatialreward.RewardModel`.
"""

from spatialreward.student.distill import DistillConfig, Distiller
from spatialreward.student.evaluate import evaluate_model_dir
from spatialreward.student.model import Student, StudentConfig, StudentOutput
from spatialreward.student.presets import build_student, list_presets, preset_config, register_preset

__all__ = [
    "DistillConfig",
    "Distiller",
    "Student",
    "StudentConfig",
    "StudentOutput",
    "build_student",
    "evaluate_model_dir",
    "list_presets",
    "preset_config",
    "register_preset",
]
