"""CNN teachers: a student architecture trained to teach (CP-JKU's DCASE'23 ensembles mix CP-ResNets with PaSSTs).

A CNN pools globally over time, so an input of any length goes through in one pass (the way EfficientAT and
CP-JKU run their CNNs on long audio); ``clip_seconds`` is only the length the network was trained on. The same
wrapper serves ``kd distill`` checkpoints of clip-level students used as teachers (``NAME=CHECKPOINT``) and the
registered CNN teachers below, whose weights ship with kd like the transformer releases.

``cp_resnet``: CP-ResNet (rho 7, 32 base channels, ~0.25 M parameters), the CNN member of CP-JKU's teacher
ensemble. Its demo release is pretrained by ``scripts/pretrain_demo_teachers.py`` on the same synthetic scene
corpus as ``passt_tiny`` and ``ast_tiny``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from students import Student, create_student
from students.cp_resnet import checkpoint_filter_fn as cp_resnet_filter

from ._base import Teacher, TeacherInputError, TeacherOutput
from ._registry import DEMO_HEAD, DEMO_PRETRAINING, register_teacher

__all__ = ["StudentAsTeacher", "checkpoint_filter_fn"]


class StudentAsTeacher(Teacher):
    """A clip-level student network in the teacher contract; its weights live under ``student.``."""

    def __init__(self, student: Student, name: str, clip_seconds: float) -> None:
        super().__init__()
        if student.frames_per_second is not None:
            raise TeacherInputError(f"{name} is a frame-wise student; only clip-level students can serve as teachers")
        self.student, self.name = student, name
        self.sample_rate, self.num_classes = student.sample_rate, student.num_classes
        self.clip_seconds = self.window_hop_seconds = float(clip_seconds)
        self.classifier_names = tuple(f"student.{n}" for n in student.classifier_names)

    @property
    def frontend(self) -> nn.Module:
        return self.student.frontend

    def forward_spectrogram(self, spec: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(self.student.forward_spectrogram(spec))

    def forward(self, waveform: torch.Tensor) -> TeacherOutput:
        if waveform.dim() != 2:
            raise TeacherInputError(f"expected a waveform batch [B, N], got shape {tuple(waveform.shape)}")
        return self.forward_spectrogram(self.frontend(waveform))

    def frontend_config(self) -> dict[str, Any]:
        mel = self.frontend
        settings = {k: getattr(mel, k) for k in ("n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax")
                    if hasattr(mel, k)}
        return {"frontend": type(mel).__name__, "student": self.name, "sample_rate": self.sample_rate, **settings,
                "context_seconds": self.clip_seconds, "long_input": "one pass, global pooling over time"}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept this wrapper's own files (``student.*``) and CP-ResNet files in the student's or CP-JKU's layout."""
    if any(k.startswith("student.") for k in state_dict):
        return state_dict
    return {f"student.{k}": v for k, v in cp_resnet_filter(state_dict, model.student).items()}


@register_teacher(cfg={
    "origin": "CP-ResNet pretrained by kd on synthetic scenes (demo release)",
    "paper": "Koutini et al., TASLP 2021 (CP-ResNet); CP-JKU DCASE'23 Task 1 teacher ensemble",
    "file": "cp_resnet_demo.pt",
    "sha256": "78f55d8f218f4fc3e7bb2d359a394f0f6be5b356b134a1b0dbc4adbb7d6d550c",
    "pretraining": {**DEMO_PRETRAINING, "epochs": 6, "heldout_accuracy": 0.820},
    **DEMO_HEAD,
    "num_classes": 10,
    "sample_rate": 32000,
}, checkpoint_filter=checkpoint_filter_fn)
def cp_resnet(num_classes: int = 10, clip_seconds: float = 1.0, **kwargs: Any) -> StudentAsTeacher:
    """CP-ResNet as a teacher (rho 7, 32 base channels, hop 750); defaults: 1 s scenes, 10 classes.

    ``create_teacher("cp_resnet", pretrained=True)`` loads the demo release (pretrained on synthetic scenes).
    """
    return StudentAsTeacher(create_student("cp_resnet", num_classes, **kwargs), "cp_resnet", clip_seconds)
