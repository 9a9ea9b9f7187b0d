"""Value codecs of the logit store: ``f32``, ``f16`` and ``q8``, the 8-bit codec designed for KD targets.

All three are stored through Zarr's zstd (+ crc32c) chain; these classes only map logits to stored values.

``q8`` design (measured on AudioSet-like logits, see ``benchmarks/store_bench.py`` and BENCHMARKS.md):
students train on ``sigmoid(z)`` (multi-label BCE) and on ``softmax(z / T)`` (KL), so the quantiser must
bound the error in probability space near ``z = 0`` *and* keep logit resolution where softmax mass sits,
including the strongly negative logits that hold much of the mass at ``T = 2``.

- Uniform steps in probability space bound ``|Δsigmoid|`` but map every negative logit to a few levels:
  softmax KL explodes (≈0.03 nats at T=1).
- Per-class affine steps on logits keep KL small but leave ``|Δsigmoid|`` ≈ 0.013 around ``z = 0``.
- ``q8`` companding: ``u = asinh(z / s)`` (``s = 1``) is linear around 0 (dense levels where the sigmoid is
  steep) and logarithmic in the tails (coarse but still logit-resolving levels), and it inverts in closed
  form (``z = s sinh(u)``). Levels are spread uniformly in ``u`` over the ``[lo, hi]`` range of each class in
  each block of 128 rows (or 64 frames), so a block of strongly negative classes gets fine steps there. The
  ranges are stored as float16 rounded outwards (4 bytes per class and block: 0.03 bytes per logit).
- Along a time axis (``axis >= 1``) the codes are stored as differences of consecutive frames (mod 256):
  temporally smooth frame logits then compress to about half a byte per logit under zstd.

``f16`` and ``q8`` saturate logits beyond the float16 range (``|z| > 65504``) at ``+-65504``: the sigmoid is
0 or 1 either way, and one such logit would otherwise store an infinite value (``f16``) or an infinite
range that turns its whole block of ``q8`` codes into NaN.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["CODECS", "Codec", "F16Codec", "F32Codec", "Q8Codec", "get_codec"]


class Codec(ABC):
    """Maps float32 logits to the stored dtype and back; ``ranges`` is side information (``q8`` only)."""

    name: str
    dtype: np.dtype
    uses_ranges: bool = False

    @abstractmethod
    def encode(self, x: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored values for ``x`` (finite float32), plus ``[2, ...]`` ranges per ``block`` along ``axis``."""

    @abstractmethod
    def decode(self, stored: np.ndarray, ranges: np.ndarray | None, axis: int, block: int) -> np.ndarray:
        """Float32 logits back from stored values (and their ranges)."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class F32Codec(Codec):
    name, dtype = "f32", np.dtype("float32")

    def encode(self, x, axis, block):
        return np.asarray(x, np.float32), None

    def decode(self, stored, ranges, axis, block):
        return np.asarray(stored, np.float32)


class F16Codec(Codec):
    name, dtype = "f16", np.dtype("float16")

    def encode(self, x, axis, block):
        return _saturate_f16(x).astype(np.float16), None

    def decode(self, stored, ranges, axis, block):
        return np.asarray(stored, np.float32)


F16_MAX = float(np.finfo(np.float16).max)  # 65504: the largest finite float16


def _saturate_f16(x) -> np.ndarray:
    """``x`` as float32, clipped to the finite float16 range."""
    return np.clip(np.asarray(x, np.float32), -F16_MAX, F16_MAX)


def _block_reduce(fn: np.ufunc, x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """``fn`` over consecutive blocks of ``block`` entries along ``axis`` (the last block may be shorter)."""
    return fn.reduceat(x, np.arange(0, x.shape[axis], block), axis=axis)


def _round_outwards_f16(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo16, hi16 = lo.astype(np.float16), hi.astype(np.float16)
    with np.errstate(over="ignore"):  # nextafter(+-65504) is infinite, but |lo|, |hi| <= 65504 never select it
        lo16 = np.where(lo16.astype(np.float32) > lo, np.nextafter(lo16, np.float16(-np.inf)), lo16)
        hi16 = np.where(hi16.astype(np.float32) < hi, np.nextafter(hi16, np.float16(np.inf)), hi16)
    return lo16, hi16


class Q8Codec(Codec):
    """8-bit companded quantiser: 255 uniform steps of ``asinh(z / scale)`` per class and block (see module doc)."""

    name, dtype, uses_ranges = "q8", np.dtype("uint8"), True
    LEVELS = 255

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}

    def _u_span(self, ranges: np.ndarray, axis: int, block: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-entry ``u(lo)`` and step, broadcast from per-block ranges to ``length`` entries along ``axis``."""
        u = np.arcsinh(ranges.astype(np.float32) / self.scale)
        u_lo = np.repeat(u[0], block, axis=axis).take(np.arange(length), axis=axis)
        u_hi = np.repeat(u[1], block, axis=axis).take(np.arange(length), axis=axis)
        return u_lo, (u_hi - u_lo) / self.LEVELS

    def encode(self, x, axis, block):
        x = _saturate_f16(x)  # the ranges are float16: they must stay finite
        lo, hi = _round_outwards_f16(_block_reduce(np.minimum, x, axis, block), _block_reduce(np.maximum, x, axis, block))
        ranges = np.stack([lo, hi])
        u_lo, step = self._u_span(ranges, axis, block, x.shape[axis])
        u = np.arcsinh(x / self.scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.where(step > 0, np.rint((u - u_lo) / step), 0)
        codes = np.clip(codes, 0, self.LEVELS).astype(np.uint8)
        if axis >= 1:  # a time axis: consecutive-frame differences, wrapping mod 256
            codes = np.diff(codes, axis=axis, prepend=np.zeros_like(codes.take([0], axis=axis)))
        return codes, ranges

    def decode(self, stored, ranges, axis, block):
        if axis >= 1:
            stored = np.cumsum(stored, axis=axis, dtype=np.uint8)
        u_lo, step = self._u_span(ranges, axis, block, stored.shape[axis])
        return (self.scale * np.sinh(u_lo + stored.astype(np.float32) * step)).astype(np.float32)


CODECS: dict[str, type[Codec]] = {c.name: c for c in (F32Codec, F16Codec, Q8Codec)}


def get_codec(config: str | dict[str, Any]) -> Codec:
    """A codec from its name or its recorded ``config()``."""
    from logit_store.errors import StoreError

    cfg = {"name": config} if isinstance(config, str) else dict(config)
    name = cfg.pop("name", None)
    if name not in CODECS:
        raise StoreError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    return CODECS[name](**cfg)
