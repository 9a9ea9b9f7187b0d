"""The forward pass of training, shared by teachers and students (evaluation runs models through
:mod:`kd.evaluate.loop`).

A model here is any teacher or student of the registries: it has ``sample_rate``, ``frames_per_second``
(None for clip-level models), a ``frontend`` (waveform -> spectrogram, augmenting in training mode) and
``forward_spectrogram``. Teachers return ``TeacherOutput(clip, frame)``, students a tensor;
:meth:`kd.tasks.Task.logits` picks what a task trains on.
"""
from __future__ import annotations

import torch
from torch import nn

from kd.tasks import SED, Task
from kd.train.augment import MixupParams, freq_mixstyle, mix

__all__ = ["AugmentedForward", "model_frames"]


@torch.no_grad()
def model_frames(model: nn.Module, seconds: float) -> int | None:
    """How many output frames ``model`` gives for ``seconds`` of audio (None for clip-level models)."""
    if not model.frames_per_second:
        return None
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    out = model(torch.zeros(1, round(seconds * model.sample_rate), device=param.device))
    model.train(was_training)
    return SED.logits(out).shape[1]


class AugmentedForward(nn.Module):
    """Frontend, spectrogram augmentations (Freq-MixStyle, mixup) and model as one forward.

    One module, so that DistributedDataParallel sees every use of the parameters in a single call.
    """

    def __init__(self, model: nn.Module, task: Task, mixstyle_p: float = 0.0, mixstyle_alpha: float = 0.3):
        super().__init__()
        self.model, self.task = model, task
        self.mixstyle_p, self.mixstyle_alpha = mixstyle_p, mixstyle_alpha

    def forward(self, waveform: torch.Tensor, mixup: MixupParams | None = None) -> torch.Tensor:
        spec = self.model.frontend(waveform)
        if self.mixstyle_p > 0:
            spec = freq_mixstyle(spec, alpha=self.mixstyle_alpha, p=self.mixstyle_p)
        if mixup is not None:
            spec = mix(spec, mixup)
        return self.task.logits(self.model.forward_spectrogram(spec))
