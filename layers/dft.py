"""The squared parts of a centred STFT as one strided convolution and one matrix product (a two-stage Cooley-Tukey
DFT), for export.

ONNX Runtime's ``STFT`` operator transforms frame after frame without a fast FFT, and a DFT as one convolution
costs ``n_fft`` multiply-adds per bin and frame. Splitting the ``n_fft = N1 * N2`` point DFT in two
(``n = N2 * n1 + n2``, ``k = k1 + N1 * k2``) turns it into a real ``N1``-point DFT along ``n1`` for each ``n2``,
twiddle factors, and a complex ``N2``-point DFT along ``n2``: about ``N1 + N2`` multiply-adds per bin. Both stages
run as single dense products, with no layout operation between them:

* the first stage, window and twiddle factors included, is one convolution with ``N2`` groups (one per ``n2``) over
  the signal cut into blocks of ``N2`` samples, its stride a frame's hop in blocks; where the hop is not a multiple
  of ``N2`` the frames are cut first (by slicing hop-sample blocks) and the convolution steps frame by frame. Rows of
  the frame the window leaves at zero are skipped. Its basis is computed in the graph from the DFT's phase indices
  and the window, so the file stays small; ONNX Runtime folds it into a constant when it loads the file;
* the second stage is one product of a ``2 N2 x 2 N2`` matrix with all first-stage outputs of all frames.

The input is real, so the first stage computes only ``k1 <= N1 / 2``: bin ``k1 + N1 * k2`` for a larger ``k1`` is
the conjugate of ``(N1 - k1) + N1 * (N2 - 1 - k2)`` (``X[N - k]`` is the conjugate of ``X[k]``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SquaredSTFT", "dft_factors"]


def dft_factors(n_fft: int, win_length: int | None = None) -> tuple[int, int]:
    """``(N1, N2)`` with ``N1 * N2 = n_fft`` and the fewest multiply-adds per frame for a ``win_length`` window.

    Per frame, the first stage costs ``2 H * rows * N2`` and the second ``H * (2 N2) ** 2``, with ``H = N1 // 2 + 1``
    and ``rows`` the rows of ``N2`` samples the centred window reaches.
    """
    win_length = win_length or n_fft

    def cost(n2: int) -> int:
        half, offset = n_fft // n2 // 2 + 1, (n_fft - win_length) // 2
        rows = -(-(offset + win_length) // n2) - offset // n2
        return 2 * half * rows * n2 + half * 4 * n2 * n2

    n2 = min((d for d in range(1, n_fft + 1) if n_fft % d == 0), key=cost)
    return n_fft // n2, n2


class SquaredSTFT(nn.Module):
    """The squared real and imaginary parts of a centred STFT: waveforms ``[B, N]`` -> ``[B, 2 N2 H, frames]``.

    The STFT is torch's ``stft(center=True, pad_mode="reflect")`` with ``window`` (``win_length`` samples, centred
    in ``n_fft`` as torch pads it): ``frames = N // hop_length + 1``. :meth:`rows` says where each bin's two squares
    are; their sum is the bin's power.
    """

    def __init__(self, window: torch.Tensor, n_fft: int, hop_length: int) -> None:
        super().__init__()
        n1, n2 = dft_factors(n_fft, window.numel())
        offset = (n_fft - window.numel()) // 2
        first, last = offset // n2, -(-(offset + window.numel()) // n2)  # rows n1 the window reaches
        self.n_fft, self.hop_length, self.n1, self.n2 = n_fft, hop_length, n1, n2
        self.first, self.taps, self.half = first, last - first, n1 // 2 + 1  # real input: k1 <= N1 / 2
        padded = torch.zeros(n_fft)
        padded[offset:offset + window.numel()] = window.float()
        sample = n2 * torch.arange(first, last)[None, :] + torch.arange(n2)[:, None]  # [N2, rows]: n of each tap
        self.register_buffer("sample", sample[:, None, None, :])  # [N2, 1, 1, rows]
        self.register_buffer("tapered", padded[sample][:, None, None, :])  # the window at each tap
        self.register_buffer("k1", torch.arange(self.half)[:, None])  # [H, 1]
        angle = 2 * math.pi * torch.arange(n2, dtype=torch.float64)[:, None] * torch.arange(n2)[None, :] / n2
        cos, sin = angle.cos(), angle.sin()  # [k2, n2]; X = sum_n2 (cos - i sin) Y: rows (re, k2), columns (n2, re|im)
        stage2 = torch.stack([torch.stack([cos, sin], 2), torch.stack([-sin, cos], 2)])  # [2, N2, N2, 2]
        self.register_buffer("stage2", stage2.reshape(2 * n2, 2 * n2).float())

    def basis(self) -> torch.Tensor:
        """``[N2 * 2 * H, 1, rows]``: group ``n2``'s real and imaginary first-stage rows, window and twiddles in.

        ``exp(-2 pi i k1 n / n_fft)`` at the tap's sample ``n``, its phase reduced modulo ``n_fft`` in integers and
        the product with the window taken in float64, so that each weight is rounded to float32 once (a float32
        basis carries cp_mobile_tiny's whole-file logits past 1e-4 of PyTorch's).
        """
        phase = (self.k1 * self.sample) % self.n_fft  # [N2, 1, H, rows]
        angle = phase.double() * (2 * math.pi / self.n_fft)
        parts = torch.cat([angle.cos(), -angle.sin()], dim=1)  # [N2, 2, H, rows]
        return (parts * self.tapered.double()).float().reshape(-1, 1, self.taps)

    def rows(self, bins: torch.Tensor) -> torch.Tensor:
        """``[2, len(bins)]``: the output rows of each bin's squared real and imaginary part."""
        low, high = bins % self.n1, bins // self.n1
        mirrored = low > self.n1 // 2
        k1 = torch.where(mirrored, self.n1 - low, low)
        k2 = torch.where(mirrored, self.n2 - 1 - high, high)
        real = k2 * self.half + k1
        return torch.stack([real, real + self.n2 * self.half])

    def grouped(self, x: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
        """``x`` (padded) as the first stage's ``[B, N2, length]`` input and the stride of its frames."""
        batch, start = x.shape[0], self.first * self.n2
        if self.hop_length % self.n2 == 0:  # blocks of N2 samples, a frame every hop / N2 blocks
            stride = self.hop_length // self.n2
            blocks = (count - 1) * stride + self.taps
            return x[:, start:start + blocks * self.n2].reshape(batch, blocks, self.n2).transpose(1, 2), stride
        span = self.taps * self.n2  # cut the frames from hop-sample blocks (a gather of every sample is slower)
        per = -(-span // self.hop_length)
        blocks = count + per - 1
        x = F.pad(x[:, start:], (0, per * self.hop_length))[:, :blocks * self.hop_length]
        x = x.reshape(batch, blocks, self.hop_length)
        framed = torch.cat([x[:, j:j + count] for j in range(per)], dim=2)[:, :, :span]
        framed = framed.reshape(batch, count, self.taps, self.n2).permute(0, 3, 1, 2)
        return framed.reshape(batch, self.n2, count * self.taps), self.taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        batch, count = x.shape[0], (x.shape[1] - self.n_fft) // self.hop_length + 1
        grouped, stride = self.grouped(x, count)
        stage1 = F.conv1d(grouped, self.basis(), stride=stride, groups=self.n2)  # [B, (n2, re|im, k1), T]
        stage2 = self.stage2 @ stage1.reshape(batch, 2 * self.n2, self.half * count)  # [B, (re|im, k2), (k1, T)]
        stage2 = stage2.reshape(batch, 2 * self.n2 * self.half, count)
        return stage2 * stage2
