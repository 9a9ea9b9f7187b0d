"""Batch augmentations of the field, each keeping audio and targets consistent.

* mixup (Zhang et al., 2018) as EfficientAT applies it: ``lam ~ Beta(a, a)``, ``lam = max(lam, 1 - lam)`` per
  example, inputs, labels and teacher targets mixed with the same ``lam`` and permutation.
* Freq-MixStyle (Schmid et al., DCASE'22/23): normalise each frequency band of a spectrogram by its
  mean/std over channels and time, then re-scale with statistics mixed with another example's. It changes
  the "device colouring" of a clip, not its content, so targets stay.
* device impulse responses (Morocutti et al., "Device-Robust Acoustic Scene Classification via Impulse
  Response Augmentation", 2023): convolve clips of chosen devices with a random microphone response.
* time roll and gain: circular shift (frame targets rolled by the same whole number of frames) and a
  random level change.

SpecAugment-style frequency/time masks live in the models' frontends (``layers.mel.MelSTFT``), active in
training only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kd.core.views import ImpulseResponses

__all__ = [
    "DeviceImpulseResponses",
    "MixupParams",
    "freq_mixstyle",
    "mix",
    "mixup_params",
    "random_gain",
    "time_roll",
]


@dataclass(frozen=True)
class MixupParams:
    perm: torch.Tensor  # [B] partner index of each example
    lam: torch.Tensor  # [B] weight of the example itself, in [0.5, 1]


def mixup_params(batch_size: int, alpha: float, device: torch.device | str = "cpu",
                 groups: torch.Tensor | None = None) -> MixupParams:
    """Mixing weights ``lam ~ Beta(alpha, alpha)`` folded to ``[0.5, 1]`` and each example's partner.

    ``groups`` (a boolean ``[B]``, e.g. which clips have labels): partners are drawn within each group, so
    labelled clips mix with labelled clips and transfer clips with transfer clips, and a mixed hard label never
    takes in a clip that has none.
    """
    lam = torch.distributions.Beta(alpha, alpha).sample((batch_size,))
    lam = torch.maximum(lam, 1.0 - lam).to(device)
    if groups is None:
        return MixupParams(torch.randperm(batch_size, device=device), lam)
    groups, perm = groups.cpu(), torch.empty(batch_size, dtype=torch.long)
    for value in (True, False):
        members = torch.nonzero(groups == value).flatten()
        perm[members] = members[torch.randperm(len(members))]
    return MixupParams(perm.to(device), lam)


def mix(x: torch.Tensor, params: MixupParams) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` along the batch axis, for inputs, labels and teacher targets alike."""
    lam = params.lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return lam * x + (1.0 - lam) * x[params.perm]


def freq_mixstyle(spec: torch.Tensor, alpha: float = 0.3, p: float = 0.4, eps: float = 1e-6) -> torch.Tensor:
    """Freq-MixStyle on a batch of spectrograms ``[B, C, F, T]``, applied to the whole batch with probability ``p``."""
    if torch.rand(()) >= p:
        return spec
    mu = spec.mean(dim=(1, 3), keepdim=True).detach()
    sigma = (spec.var(dim=(1, 3), keepdim=True) + eps).sqrt().detach()
    normed = (spec - mu) / sigma
    lam = torch.distributions.Beta(alpha, alpha).sample((spec.shape[0], 1, 1, 1)).to(spec)
    perm = torch.randperm(spec.shape[0], device=spec.device)
    return normed * (lam * sigma + (1 - lam) * sigma[perm]) + lam * mu + (1 - lam) * mu[perm]


def random_gain(waveform: torch.Tensor, max_db: float) -> torch.Tensor:
    """Scale each clip by a gain drawn uniformly from ``[-max_db, max_db]`` dB."""
    db = (torch.rand(waveform.shape[0], 1, device=waveform.device) * 2 - 1) * max_db
    return waveform * 10.0 ** (db / 20.0)


def time_roll(
    waveform: torch.Tensor,
    max_seconds: float,
    sample_rate: int,
    frame_targets: Sequence[torch.Tensor] = (),
    frames_per_second: float | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Roll each clip circularly by up to ``max_seconds``; frame targets ``[B, T, C]`` roll along with it.

    With frame targets the shift is a whole number of target frames, so the targets stay aligned exactly.
    """
    batch = waveform.shape[0]
    step = sample_rate / frames_per_second if frame_targets else 1.0
    max_steps = int(max_seconds * sample_rate / step)
    shifts = torch.randint(-max_steps, max_steps + 1, (batch,)).tolist()
    rolled = torch.stack([torch.roll(w, round(s * step)) for w, s in zip(waveform, shifts)])
    targets = [torch.stack([torch.roll(t, s, dims=0) for t, s in zip(ft, shifts)]) for ft in frame_targets]
    return rolled, targets


class DeviceImpulseResponses:
    """A folder of microphone impulse responses, convolved into clips recorded on chosen devices.

    Args:
        folder: any folder of audio files (wav/flac/ogg); each is one impulse response.
        sample_rate: rate of the clips they will be applied to (responses are resampled once, at load).
        p: probability of convolving an eligible clip.
        devices: only clips of these devices are eligible (the paper uses the reference device ``a``);
            ``None`` makes every clip eligible.
    """

    def __init__(self, folder: str | Path, sample_rate: int, p: float = 0.4, devices: Sequence[str] | None = ("a",)):
        self.set = ImpulseResponses(folder)
        self.responses = [torch.from_numpy(self.set.at(i, sample_rate)) for i in range(len(self.set))]
        self.p, self.devices, self.sample_rate = p, None if devices is None else set(devices), sample_rate

    def __len__(self) -> int:
        return len(self.responses)

    def __call__(self, waveform: torch.Tensor, devices: Sequence[str | None] | None = None) -> torch.Tensor:
        out = waveform.clone()
        for i in range(waveform.shape[0]):
            eligible = self.devices is None or (devices is not None and devices[i] in self.devices)
            if eligible and torch.rand(()) < self.p:
                ir = self.responses[int(torch.randint(len(self.responses), ()))].to(waveform)
                out[i] = convolve_same_length(waveform[i], ir)
        return out


def convolve_same_length(x: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """FFT convolution cut to ``len(x)`` and re-scaled to the input's RMS, so the level stays comparable."""
    n = x.shape[-1] + ir.shape[-1] - 1
    y = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(ir, n), n)[..., : x.shape[-1]]
    return y * (x.square().mean().sqrt() / y.square().mean().sqrt().clamp_min(1e-8))
