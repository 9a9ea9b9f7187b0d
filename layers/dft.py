"""The squared parts of a centred STFT as one strided convolution and one or two rounds of matrix products (a
Cooley-Tukey DFT in two or three stages), for export.

ONNX Runtime's ``STFT`` operator transforms frame after frame without a fast FFT, and a DFT as one convolution
costs ``n_fft`` multiply-adds per bin and frame. Splitting the ``n_fft = N1 * N2`` point DFT in two
(``n = N2 * n1 + n2``, ``k = k1 + N1 * k2``) turns it into a real ``N1``-point DFT along ``n1`` for each ``n2``,
twiddle factors, and a complex ``N2``-point DFT along ``n2``: about ``N1 + N2`` multiply-adds per bin.

* The first stage, window and twiddle factors included, is one convolution with ``N2`` groups (one per ``n2``) over
  the signal cut into blocks of ``N2`` samples, its stride a frame's hop in blocks; where the hop is not a multiple
  of ``N2`` the frames are cut first (by slicing hop-sample blocks) and the convolution steps frame by frame. Rows of
  the frame the window leaves at zero are skipped. Its basis is computed in the graph from the DFT's phase indices
  and the window, so the file stays small; ONNX Runtime folds it into a constant when it loads the file.
* The ``N2``-point DFT is one product of a ``2 N2 x 2 N2`` matrix with all first-stage outputs of all frames, or,
  with ``N2 = A * B`` (``n2 = b * A + a``), a ``B``-point DFT along ``b`` (one ``2 B x 2 B`` product), twiddle
  factors, and an ``A``-point DFT along ``a`` (one ``2 A x 2 A`` product for each ``kb``, its twiddles folded
  in), with a transpose before each: fewer multiply-adds (``A + B`` instead of ``N2`` per bin) for more
  passes over the data, which pays for long FFTs (CP-Mobile's 4096 = 32 x 16 x 8: its exported frontend 1.55
  against 2.16 ms as 128 x 32 in two stages; mn04's 1024 stays 64 x 16).

The input is real, so the first stage computes only ``k1 <= N1 / 2``: bin ``k1 + N1 * k2`` for a larger ``k1`` is
the conjugate of ``(N1 - k1) + N1 * (N2 - 1 - k2)`` (``X[N - k]`` is the conjugate of ``X[k]``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SquaredSTFT", "dft_factors"]


MOVE_COST = 15  # multiply-adds a float32 moved by a transpose or a matrix product's pass costs (measured, this CPU)


def dft_factors(n_fft: int, win_length: int | None = None) -> tuple[int, int, int]:
    """``(N1, A, B)`` with ``N1 * A * B = n_fft`` and the least work per frame for a ``win_length`` window.

    ``B = 1`` is the two-stage DFT (``N2 = A``). Per frame, the first stage costs ``2 H * rows * N2`` multiply-adds
    (``H = N1 // 2 + 1``, ``rows`` the rows of ``N2`` samples the centred window reaches), the second
    ``4 H N2 * A`` and, split, ``4 H N2 * (A + B)`` plus three passes over its ``2 H N2`` values (:data:`MOVE_COST`).
    """
    win_length = win_length or n_fft
    offset = (n_fft - win_length) // 2

    def cost(factors: tuple[int, int, int]) -> int:
        n1, a, b = factors
        n2, half = a * b, n1 // 2 + 1
        rows = -(-(offset + win_length) // n2) - offset // n2
        second = 4 * half * n2 * a if b == 1 else 4 * half * n2 * (a + b) + MOVE_COST * 3 * 2 * half * n2
        return 2 * half * rows * n2 + second

    splits = [(n_fft // n2, n2 // b, b) for n2 in _divisors(n_fft) for b in _divisors(n2) if b < n2 or b == 1]
    return min(splits, key=cost)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _complex_product(phase: torch.Tensor) -> torch.Tensor:
    """``[2 O, 2 I]``: multiplying by ``exp(-i phase[o, i])`` as a real matrix, rows ``(re|im, o)``, columns
    ``(re|im, i)``."""
    cos, sin = phase.cos(), phase.sin()
    return torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)]).float()


class SquaredSTFT(nn.Module):
    """The squared real and imaginary parts of a centred STFT: waveforms ``[B, N]`` -> ``[B, 2 N2 H, frames]``.

    The STFT is torch's ``stft(center=True, pad_mode="reflect")`` with ``window`` (``win_length`` samples, centred
    in ``n_fft`` as torch pads it): ``frames = N // hop_length + 1``. :meth:`rows` says where each bin's two squares
    are; their sum is the bin's power.
    """

    def __init__(self, window: torch.Tensor, n_fft: int, hop_length: int) -> None:
        super().__init__()
        n1, a, b = dft_factors(n_fft, window.numel())
        n2 = a * b
        offset = (n_fft - window.numel()) // 2
        first, last = offset // n2, -(-(offset + window.numel()) // n2)  # rows n1 the window reaches
        self.n_fft, self.hop_length, self.n1, self.n2, self.a, self.b = n_fft, hop_length, n1, n2, a, b
        self.first, self.taps, self.half = first, last - first, n1 // 2 + 1  # real input: k1 <= N1 / 2
        padded = torch.zeros(n_fft)
        padded[offset:offset + window.numel()] = window.float()
        sample = n2 * torch.arange(first, last)[None, :] + torch.arange(n2)[:, None]  # [N2, rows]: n of each tap
        self.register_buffer("sample", sample[:, None, None, :])  # [N2, 1, 1, rows]
        self.register_buffer("tapered", padded[sample][:, None, None, :])  # the window at each tap
        self.register_buffer("k1", torch.arange(self.half)[:, None])  # [H, 1]
        k_b = torch.arange(b, dtype=torch.float64)
        self.register_buffer("inner", _complex_product(2 * math.pi * k_b[:, None] * k_b[None, :] / b))  # over b
        k_a = torch.arange(a, dtype=torch.float64)
        outer = torch.stack([_complex_product(2 * math.pi * k_a[None, :] * (k_a[:, None] / a + kb / n2))
                             for kb in range(b)])  # [B, (re|im, ka), (re|im, a)]: over a, twiddles in
        if b == 1:  # the first stage's rows are (a, re|im)
            outer = outer[:, :, torch.arange(2 * a).reshape(2, a).T.flatten()]
        self.register_buffer("outer", outer.contiguous())

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
        k2 = torch.where(mirrored, self.n2 - 1 - high, high)  # = kb + B * ka
        real = (k2 % self.b * 2 * self.a + k2 // self.b) * self.half + k1  # rows (kb, re|im, ka, k1)
        return torch.stack([real, real + self.a * self.half])

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
        columns = self.half * count  # (k1, T)
        if self.b == 1:
            parts = stage1.reshape(batch, 1, 2 * self.a, columns)  # [B, 1, (a, re|im), (k1, T)]
        else:  # n2 = b * A + a
            parts = stage1.reshape(batch, self.n2, 2, columns).transpose(1, 2)  # [B, re|im, (b, a), (k1, T)]
            parts = self.inner @ parts.reshape(batch, 2 * self.b, self.a * columns)  # [B, (re|im, kb), (a, k1, T)]
            parts = parts.reshape(batch, 2, self.b, self.a * columns).transpose(1, 2)
            parts = parts.reshape(batch, self.b, 2 * self.a, columns)  # [B, kb, (re|im, a), (k1, T)]
        stage2 = (self.outer @ parts).reshape(batch, 2 * self.n2 * self.half, count)  # [B, (kb, re|im, ka, k1), T]
        return stage2 * stage2
