"""Network definitions: the Restormer teacher, the Residual UNet student, and the
checkpoint files that hold them."""

from models.checkpoint import (CheckpointError, load_checkpoint, load_restormer, load_student,
                               save_checkpoint)
from models.restormer import RESTORMER_PRESETS, Restormer, restormer_config_from_state_dict
from models.student import STUDENT_PRESETS, ResidualUNet, build_student

__all__ = [
    "CheckpointError", "RESTORMER_PRESETS", "Restormer", "ResidualUNet", "STUDENT_PRESETS",
    "build_student", "load_checkpoint", "load_restormer", "load_student",
    "restormer_config_from_state_dict", "save_checkpoint",
]
