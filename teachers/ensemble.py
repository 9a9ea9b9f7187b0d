"""Several teachers run on one batch of decoded audio, each at its own sample rate and with its own frontend."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from layers.resample import resample

from ._base import Teacher, TeacherOutput

__all__ = ["TeacherEnsemble"]


class TeacherEnsemble(nn.Module):
    """Named teachers evaluated together: audio is decoded once, resampled once per distinct teacher rate.

    ``forward(waveform, sample_rate)`` returns ``{name: TeacherOutput}`` with each member's raw logits, so each
    member can be stored under its own name; ``mean_clip_logits`` averages members that share a label set
    (the EfficientAT-style ensemble target).
    """

    def __init__(self, teachers: Mapping[str, Teacher] | Iterable[tuple[str, Teacher]]) -> None:
        super().__init__()
        items = list(teachers.items() if isinstance(teachers, Mapping) else teachers)
        if not items:
            raise ValueError("a TeacherEnsemble needs at least one teacher")
        names = [name for name, _ in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"teacher names must be unique; repeated: {', '.join(duplicates)}")
        self.members = nn.ModuleDict(items)

    @property
    def sample_rates(self) -> dict[str, int]:
        return {name: t.sample_rate for name, t in self.members.items()}

    def forward(self, waveform: torch.Tensor, sample_rate: int) -> dict[str, TeacherOutput]:
        """Logits of every member for mono audio ``[B, N]`` sampled at ``sample_rate``."""
        by_rate: dict[int, torch.Tensor] = {}
        outputs = {}
        for name, teacher in self.members.items():
            if teacher.sample_rate not in by_rate:
                by_rate[teacher.sample_rate] = resample(waveform, sample_rate, teacher.sample_rate)
            outputs[name] = teacher(by_rate[teacher.sample_rate])
        return outputs

    @staticmethod
    def mean_clip_logits(outputs: Mapping[str, TeacherOutput]) -> torch.Tensor:
        """Average of the members' clip logits; all members must predict the same number of classes."""
        classes = {name: out.clip.shape[-1] for name, out in outputs.items()}
        if len(set(classes.values())) != 1:
            raise ValueError(f"cannot average logits over different label sets: {classes}")
        return torch.stack([out.clip for out in outputs.values()]).mean(dim=0)
