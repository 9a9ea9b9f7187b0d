"""Mel-spectrogram frontends in plain torch (no torchaudio).

``kaldi_mel_banks`` builds Kaldi's triangular mel filters (mel = 1127 ln(1 + f/700), triangles spaced
evenly in mel between ``fmin`` and ``fmax``, evaluated at the FFT bin centres). ``MelSTFT`` is the
frontend of EfficientAT and PaSST (Schmid et al., "Efficient Large-Scale Audio Tagging via
Transformer-to-CNN Knowledge Distillation", ICASSP 2023; Koutini et al., "Efficient Training of Audio
Transformers with Patchout", Interspeech 2022): pre-emphasis, a power STFT, Kaldi mel banks,
``log(x + 1e-5)`` and the fixed normalisation ``(x + 4.5) / 5``. In training it jitters the mel range and
applies SpecAugment-style masks, as its authors do. Those constants are defined here once (:data:`PREEMPHASIS`,
:func:`log_mel`) for the frontend, its export form (:class:`ExportMelSTFT`, ``MelSTFT.exportable()``) and its
float64 reference (:func:`exact_log_mel`).
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .dft import SquaredSTFT

__all__ = ["PREEMPHASIS", "ExportMelSTFT", "MelSTFT", "exact_log_mel", "kaldi_mel_banks", "log_mel",
           "mask_along_axis", "mel_scale"]

PREEMPHASIS = 0.97  # x[n + 1] - 0.97 x[n]
LOG_OFFSET, LOG_SHIFT, LOG_SCALE = 1e-5, 4.5, 5.0  # (log(mel + 1e-5) + 4.5) / 5


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's mel scale, ``1127 ln(1 + f / 700)``."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float) -> torch.Tensor:
    """Kaldi's mel filter bank as a ``[n_mels, n_fft // 2 + 1]`` float32 matrix.

    Kaldi evaluates the filters on the first ``n_fft // 2`` bins; the Nyquist bin gets a zero weight.
    A non-positive ``fmax`` counts down from the Nyquist frequency, as in Kaldi. The band edges are
    computed in double precision and the filters in float32, the precision Kaldi-compatible
    frontends use, so the banks agree with them to float32 rounding.
    """
    nyquist = sample_rate / 2
    if fmax <= 0:
        fmax += nyquist
    if not 0 <= fmin < fmax <= nyquist:
        raise ValueError(f"mel range must satisfy 0 <= fmin < fmax <= {nyquist}, got fmin={fmin}, fmax={fmax}")
    mel_low, mel_high = mel_scale(float(fmin)), mel_scale(float(fmax))
    delta = (mel_high - mel_low) / (n_mels + 1)
    index = torch.arange(n_mels, dtype=torch.float32)[:, None]
    left, centre, right = mel_low + index * delta, mel_low + (index + 1.0) * delta, mel_low + (index + 2.0) * delta
    bin_mel = mel_scale(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32))[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return nn.functional.pad(banks, (0, 1))


def log_mel(mel: torch.Tensor) -> torch.Tensor:
    """The frontend's compression of mel energies: ``(log(mel + 1e-5) + 4.5) / 5``."""
    return (torch.log(mel + LOG_OFFSET) + LOG_SHIFT) / LOG_SCALE


def mask_along_axis(x: torch.Tensor, max_width: int, axis: int) -> torch.Tensor:
    """Zero one random band of width ``U[0, max_width)`` per example along ``axis`` (SpecAugment).

    ``x`` is ``[B, ..., F, T]``-like; each example draws its own band, so a batch is not masked alike.
    """
    if max_width <= 0:
        return x
    size = x.shape[axis]
    batch = x.shape[0]
    width = torch.rand(batch, device=x.device) * min(max_width, size)
    start = torch.rand(batch, device=x.device) * (size - width)
    pos = torch.arange(size, device=x.device)
    band = (pos[None, :] >= start[:, None].floor()) & (pos[None, :] < (start + width)[:, None].floor())
    shape = [batch] + [1] * (x.dim() - 1)
    shape[axis if axis >= 0 else x.dim() + axis] = size
    return x.masked_fill(band.view(shape), 0.0)


class MelSTFT(nn.Module):
    """EfficientAT / PaSST log-mel frontend: waveform ``[B, N]`` -> ``[B, 1, n_mels, frames]``.

    Frames: ``N // hop + 1`` (centred STFT), i.e. 100 frames per second at 32 kHz with hop 320.

    Args:
        freqm: maximal frequency-mask width in mel bins (training only; 0 disables).
        timem: maximal time-mask width in frames (training only; 0 disables).
        fmax: upper mel edge; ``None`` means ``sr/2 - fmax_aug_range/2`` as in the reference frontend.
        fmin_aug_range, fmax_aug_range: in training, ``fmin`` moves up by ``U{0..fmin_aug_range-1}`` Hz
            and ``fmax`` by ``±fmax_aug_range/2`` Hz for each batch.
    """

    def __init__(
        self,
        n_mels: int = 128,
        sample_rate: int = 32000,
        win_length: int = 800,
        hop_length: int = 320,
        n_fft: int = 1024,
        freqm: int = 48,
        timem: int = 192,
        fmin: float = 0.0,
        fmax: float | None = None,
        fmin_aug_range: int = 10,
        fmax_aug_range: int = 2000,
    ) -> None:
        super().__init__()
        if fmin_aug_range < 1 or fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 disables the jitter)")
        self.n_mels, self.sample_rate, self.n_fft = n_mels, sample_rate, n_fft
        self.win_length, self.hop_length = win_length, hop_length
        self.freqm, self.timem = freqm, timem
        self.fmin = fmin
        self.fmax = sample_rate // 2 - fmax_aug_range // 2 if fmax is None else fmax
        self.fmin_aug_range, self.fmax_aug_range = fmin_aug_range, fmax_aug_range
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        self.register_buffer(
            "mel_basis", kaldi_mel_banks(n_mels, n_fft, sample_rate, self.fmin, self.fmax), persistent=False
        )

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples (pre-emphasis drops one sample)."""
        return (num_samples - 1) // self.hop_length + 1

    def extra_repr(self) -> str:
        return (
            f"sr={self.sample_rate}, n_fft={self.n_fft}, win={self.win_length}, hop={self.hop_length}, "
            f"n_mels={self.n_mels}, fmin={self.fmin}, fmax={self.fmax}, freqm={self.freqm}, timem={self.timem}"
        )

    def _training_mel_basis(self) -> torch.Tensor:
        fmin = self.fmin + int(torch.randint(self.fmin_aug_range, (1,)))
        fmax = self.fmax + self.fmax_aug_range // 2 - int(torch.randint(self.fmax_aug_range, (1,)))
        fmax = min(fmax, self.sample_rate / 2)
        return kaldi_mel_banks(self.n_mels, self.n_fft, self.sample_rate, fmin, fmax).to(self.window.device)

    @staticmethod
    def preemphasize(waveform: torch.Tensor) -> torch.Tensor:
        """``x[n + 1] - 0.97 x[n]`` (one sample shorter): the reference's 2-tap ``conv1d``, bit for bit, by slicing,
        which is 20x faster on a CPU (oneDNN's conv1d with a 2-tap kernel over 32 000 samples costs ~1 ms a clip)."""
        x = waveform.float()
        return x[..., 1:] - PREEMPHASIS * x[..., :-1]

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.preemphasize(waveform)
        spec = torch.stft(
            x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=self.window,
            center=True, normalized=False, return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        basis = self._training_mel_basis() if self.training else self.mel_basis
        with torch.autocast(device_type=power.device.type, enabled=False):
            mel = torch.matmul(basis, power)
        mel = log_mel(mel)
        if self.training:  # masks zero the normalised values, as the reference does
            mel = mask_along_axis(mel, self.freqm, axis=1)
            mel = mask_along_axis(mel, self.timem, axis=2)
        return mel.unsqueeze(1)

    def exportable(self) -> ExportMelSTFT:
        """The eval-mode frontend in the form ``kd export`` writes (see :class:`ExportMelSTFT`)."""
        return ExportMelSTFT(self)

    def settings(self) -> dict[str, Any]:
        """Everything the eval-mode frontend computes with (``kd export`` stores it in a file's metadata)."""
        return {"type": "log-mel (kd MelSTFT)", "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "n_fft": self.n_fft, "win_length": self.win_length, "hop_length": self.hop_length,
                "fmin": float(self.fmin), "fmax": float(self.fmax), "window": "hann (symmetric), centred",
                "steps": f"pre-emphasis {PREEMPHASIS:g}; power STFT (centred, reflect padding); Kaldi mel banks; "
                         f"log(x + {LOG_OFFSET:g}); (x + {LOG_SHIFT:g}) / {LOG_SCALE:g}"}


class ExportMelSTFT(nn.Module):
    """:class:`MelSTFT` in eval mode as ONNX Runtime runs it fast, from the same window and mel banks.

    The STFT is :class:`layers.dft.SquaredSTFT` (the squares of each bin's real and imaginary part, in the order its
    stages leave them), and the mel projection is kept only over its non-zero band: the filters in ``groups``
    groups of neighbours, each a dense matrix over the squares of the bins its filters cover (stored twice, for the
    real and the imaginary parts), gathered by one index (CP-Mobile's 256 x 2049 matrix, 2.1 MB, becomes 0.14 MB).
    The products of ``MelSTFT`` with the zeros left out and each power's sum taken inside the projection; the DFT
    rounds differently from torch's FFT (within ~5e-5 after the log).
    """

    def __init__(self, mel: MelSTFT, groups: int = 32) -> None:
        super().__init__()
        basis = mel.mel_basis
        self.stft = SquaredSTFT(mel.window, mel.n_fft, mel.hop_length)
        edges = np.linspace(0, mel.n_mels, min(groups, mel.n_mels) + 1).round().astype(int)
        rows, self.bands = [], []  # rows of each group in the gathered squares, buffer band{i}: [filters, rows]
        for i, (start, stop) in enumerate(itertools.pairwise(edges)):
            filters = basis[start:stop]
            columns = (filters != 0).any(dim=0).nonzero()[:, 0]
            first, last = (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 1)
            used = sum(len(r) for r in rows)
            rows.append(self.stft.rows(torch.arange(first, last)).flatten())  # real parts' squares, then imaginary
            self.bands.append((used, used + len(rows[-1])))
            self.register_buffer(f"band{i}", filters[:, first:last].repeat(1, 2).contiguous())
        self.register_buffer("gather", torch.cat(rows))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        squares = self.stft(MelSTFT.preemphasize(waveform)).index_select(1, self.gather)  # [B, rows, T]
        mel = torch.cat([getattr(self, f"band{i}") @ squares[:, a:b] for i, (a, b) in enumerate(self.bands)], dim=1)
        return log_mel(mel).unsqueeze(1)


def exact_log_mel(frontend: MelSTFT, waveforms: np.ndarray) -> torch.Tensor:
    """The eval-mode log-mel spectrogram of ``waveforms`` computed in float64, returned as float32.

    The float32 frontend's FFT rounds low-energy bins by up to ~1e-5 after the log (its error is relative to a
    frame's energy, not a bin's); this is the reference float32 implementations are measured against.
    """
    wave = torch.as_tensor(waveforms).double()
    x = wave[:, 1:] - PREEMPHASIS * wave[:, :-1]
    spec = torch.stft(x, frontend.n_fft, hop_length=frontend.hop_length, win_length=frontend.win_length,
                      window=frontend.window.double(), center=True, return_complex=True)
    mel = frontend.mel_basis.double() @ (spec.real.square() + spec.imag.square())
    return log_mel(mel).unsqueeze(1).float()
