"""Aligning frame-wise targets between frame rates.

Teachers and students rarely share a frame rate (frame-wise PaSST and a CNN student differ by their
time strides), so stored frame logits are resampled to the student's frames before the loss. Frame ``i``
at ``fps`` covers ``[i, i + 1) / fps`` seconds and is represented by its centre ``(i + 0.5) / fps``:

* to a **lower** rate, each target frame averages the source frames whose centres fall inside it
  (average pooling; with an integer ratio this is exactly ``avg_pool1d``);
* to a **higher or equal** rate, each target frame linearly interpolates the two source frames around
  its centre (edges hold the first/last value).

Both are linear maps ``[T_dst, T_src]`` applied along time, so clip lengths that do not divide evenly
are handled without drift, and logits, probabilities or 0/1 labels can all be aligned the same way.
"""
from __future__ import annotations

import torch

__all__ = ["align_frames", "alignment_matrix"]


def alignment_matrix(src_frames: int, src_fps: float, dst_frames: int, dst_fps: float) -> torch.Tensor:
    """The ``[dst_frames, src_frames]`` matrix that maps frames at ``src_fps`` to frames at ``dst_fps``."""
    if src_frames < 1 or dst_frames < 1 or src_fps <= 0 or dst_fps <= 0:
        raise ValueError("frame counts and rates must be positive")
    src_centres = (torch.arange(src_frames, dtype=torch.float64) + 0.5) / src_fps
    dst_index = torch.arange(dst_frames, dtype=torch.float64)
    if src_fps > dst_fps:
        start, stop = dst_index / dst_fps, (dst_index + 1) / dst_fps
        inside = (src_centres[None, :] >= start[:, None]) & (src_centres[None, :] < stop[:, None])
        weights = inside.double()
        empty = weights.sum(dim=1) == 0  # target frames past the end of the source: nearest source frame
        nearest = ((dst_index + 0.5) / dst_fps * src_fps - 0.5).round().clamp(0, src_frames - 1).long()
        weights[empty, nearest[empty]] = 1.0
        return (weights / weights.sum(dim=1, keepdim=True)).float()
    position = ((dst_index + 0.5) / dst_fps * src_fps - 0.5).clamp(0, src_frames - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=src_frames - 1)
    frac = position - low
    weights = torch.zeros(dst_frames, src_frames, dtype=torch.float64)
    rows = torch.arange(dst_frames)
    weights[rows, low] += 1 - frac
    weights[rows, high] += frac
    return weights.float()


def align_frames(frames: torch.Tensor, src_fps: float, dst_fps: float, dst_frames: int) -> torch.Tensor:
    """Resample ``[B, T, C]`` (or ``[T, C]``) frames from ``src_fps`` to ``dst_frames`` frames at ``dst_fps``."""
    matrix = alignment_matrix(frames.shape[-2], src_fps, dst_frames, dst_fps).to(frames.device, frames.dtype)
    return torch.einsum("dt,...tc->...dc", matrix, frames)
