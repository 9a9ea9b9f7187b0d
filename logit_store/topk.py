"""``topk``: the ``k`` largest logits of each row (a clip, or one view of a clip), and one number for the rest.

Consistent teaching stores many views per clip (CED keeps 40), and a view's dense ``q8`` row costs a byte per
class. Softmax and sigmoid targets put almost all their weight on a few classes, so a view keeps only its
``k`` largest logits (default 20) and their class indices. The other classes read back as the block's class
profile shifted by one offset per row: ``z_c = prior_c + offset``, where ``prior_c`` is the mean logit of class
``c`` over the block of rows (a block per 128 clips and view, as ``q8``'s ranges, stored as float16: 8 bytes
a view at 527 classes), so a class that is always unlikely stays less likely than one that often sounds. The
offset keeps what the student sees of those classes:

- ``rest="softmax"`` (scene targets, KL): their softmax mass at temperature 1 is exactly what it was;
- ``rest="sigmoid"`` (tagging targets, BCE against sigmoids): their mean probability is exactly what it was.

``benchmarks/store_bench.py`` measures both choices, and the profile against an even floor, on scene and
AudioSet-like logits (BENCHMARKS.md); the teach job picks the choice of its task's activation.

A row is one fixed-size byte record (``uint8 [..., stored_width(C)]``), compressed by zstd like every array:
the class indices bit-packed at ``ceil(log2 C)`` bits (10 for AudioSet's 527), the values sorted from the
largest down as ``bits``-bit codes (default 8) spread uniformly in ``asinh(z / scale)`` between the row's
smallest and largest kept logit (as ``q8`` spreads its levels), then those two bounds and the offset as
float16. At ``k = 20`` over 527 classes: 25 + 20 + 6 = 51 bytes a view, 59 with the profile (CED: 84).
``profile=False`` reads the other classes back as one even floor instead (its zeros cost next to nothing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from logit_store.codecs import Codec, round_outwards_f16, saturate_f16
from logit_store.errors import StoreError

__all__ = ["REST_CHOICES", "TopKCodec", "pack_bits", "unpack_bits"]

REST_CHOICES = ("softmax", "sigmoid")
_BOUNDS = 3  # float16 numbers after the codes: the largest and smallest kept logit, and rest


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers ``[..., k]`` below ``2**bits`` as ``uint8 [..., ceil(k * bits / 8)]`` (big-endian bits)."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    planes = ((values.astype(np.uint32)[..., None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(*values.shape[:-1], -1), axis=-1)


def unpack_bits(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    """The ``k`` integers of ``bits`` bits per row that :func:`pack_bits` packed, as int64 ``[..., k]``."""
    planes = np.unpackbits(packed, axis=-1, count=k * bits).reshape(*packed.shape[:-1], k, bits)
    return (planes.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(-1)


@dataclass(frozen=True)
class TopKCodec(Codec):
    """``k`` largest logits per row as ``bits``-bit codes with their class indices, the rest as one logit."""

    k: int = 20
    bits: int = 8
    rest: str = "softmax"
    scale: float = 1.0
    profile: bool = True  # False: the other classes read back as one even floor (no class profile; measured)
    num_classes: int | None = None  # bound by the store when a teacher is added (for_classes)

    name = "topk"
    dtype = np.dtype("uint8")
    uses_ranges = True  # the class profile of each block
    range_fields = 1

    def __post_init__(self) -> None:
        if self.rest not in REST_CHOICES:
            raise StoreError(f"codec topk: rest must be one of {', '.join(REST_CHOICES)}, got {self.rest!r}")
        if not (self.k >= 1 and 2 <= self.bits <= 16 and self.scale > 0):
            raise StoreError(f"codec topk needs k >= 1, 2 <= bits <= 16 and scale > 0; got {self.config()}")
        if self.num_classes is not None and self.k >= self.num_classes:
            raise StoreError(f"codec topk keeps k={self.k} of {self.num_classes} classes: k must be below the "
                             f"class count (use q8 for dense logits)")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "bits": self.bits, "rest": self.rest, "scale": self.scale,
                "profile": self.profile, "num_classes": self.num_classes}

    def for_classes(self, num_classes: int) -> TopKCodec:
        return replace(self, num_classes=int(num_classes))

    @property
    def index_bits(self) -> int:
        return max(1, math.ceil(math.log2(self._classes())))

    def stored_width(self, num_classes: int) -> int:
        return self.for_classes(num_classes)._record_bytes()

    def decoded_width(self, stored_width: int) -> int:
        return self._classes()

    def _classes(self) -> int:
        if self.num_classes is None:
            raise StoreError("codec topk is bound to a class count when its teacher is added; none was given")
        return self.num_classes

    def _index_bytes(self) -> int:
        return -(-self.k * self.index_bits // 8)

    def _record_bytes(self) -> int:
        return self._index_bytes() + -(-self.k * self.bits // 8) + 2 * _BOUNDS

    # --- encoding ------------------------------------------------------------------------------------------------
    def encode(self, x, axis, block):
        x = saturate_f16(x)
        codec = self if self.num_classes is not None else self.for_classes(x.shape[-1])
        if x.shape[-1] != codec._classes():
            raise StoreError(f"codec topk was bound to {codec._classes()} classes, got logits of {x.shape[-1]}")
        profile = (np.add.reduceat(x, np.arange(0, x.shape[axis], block), axis=axis)
                   / _block_sizes(x.shape[axis], block, axis, x.ndim)).astype(np.float16)[None]
        if not codec.profile:
            profile = np.zeros_like(profile)  # zstd stores the zeros in next to nothing
        return codec._records(x, _per_row(profile[0], block, axis, x.shape[axis])), profile

    def _records(self, x: np.ndarray, profile: np.ndarray) -> np.ndarray:
        order = np.argsort(-x, axis=-1, kind="stable")
        top, others = order[..., : self.k], order[..., self.k:]
        values = np.take_along_axis(x, top, -1)
        lo, hi = round_outwards_f16(values[..., -1], values[..., 0])
        codes = self._codes(values, lo, hi)
        offset = self._offset(np.take_along_axis(x, others, -1).astype(np.float64),
                              np.take_along_axis(profile, others, -1).astype(np.float64))
        bounds = np.stack([hi, lo, saturate_f16(offset).astype(np.float16)], -1).astype("<f2")
        return np.concatenate([pack_bits(top, self.index_bits), pack_bits(codes, self.bits),
                               bounds.view(np.uint8)], -1)

    def _codes(self, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        u_lo, step = self._u_grid(lo, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.where(step > 0, np.rint((np.arcsinh(values / self.scale) - u_lo) / step), 0)
        return np.clip(codes, 0, 2**self.bits - 1).astype(np.uint32)

    def _u_grid(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``u(lo)`` and the step in ``u`` of each row, ``[..., 1]``."""
        u_lo = np.arcsinh(lo.astype(np.float32) / self.scale)[..., None]
        u_hi = np.arcsinh(hi.astype(np.float32) / self.scale)[..., None]
        return u_lo, (u_hi - u_lo) / (2**self.bits - 1)

    def _offset(self, others: np.ndarray, profile: np.ndarray) -> np.ndarray:
        """The shift of the class profile that keeps the softmax mass or mean sigmoid of ``others`` (module doc)."""
        if self.rest == "softmax":
            return _logsumexp(others) - _logsumexp(profile)
        # mean sigmoid(profile + offset) rises with the offset, and reaches the target between the offsets that
        # put the profile's largest and its smallest entry at the target's log-odds: bisect between them
        target = np.clip(_sigmoid(others).mean(-1), 1e-300, 1 - 1e-16)
        log_odds = np.log(target) - np.log1p(-target)
        lo, hi = log_odds - profile.max(-1), log_odds - profile.min(-1)
        for _ in range(40):
            mid = (lo + hi) / 2
            low = _sigmoid(profile + mid[..., None]).mean(-1) < target
            lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
        return (lo + hi) / 2

    # --- decoding ------------------------------------------------------------------------------------------------
    def decode(self, stored, ranges, axis, block):
        stored = np.asarray(stored, np.uint8)
        profile = _per_row(np.asarray(ranges[0], np.float32), block, axis, stored.shape[axis])
        if stored.shape[-1] != self._record_bytes():
            raise StoreError(f"codec topk records of {self._classes()} classes have {self._record_bytes()} bytes, "
                             f"the stored rows have {stored.shape[-1]}")
        index_end = self._index_bytes()
        code_end = self._record_bytes() - 2 * _BOUNDS
        top = unpack_bits(stored[..., :index_end], self.k, self.index_bits)
        codes = unpack_bits(stored[..., index_end:code_end], self.k, self.bits)
        bounds = np.ascontiguousarray(stored[..., code_end:]).view("<f2").astype(np.float32)
        hi, lo, offset = bounds[..., 0], bounds[..., 1], bounds[..., 2]
        u_lo, step = self._u_grid(lo, hi)
        out = profile + offset[..., None]
        np.put_along_axis(out, top, (self.scale * np.sinh(u_lo + codes * step)).astype(np.float32), -1)
        return out


def _block_sizes(length: int, block: int, axis: int, ndim: int) -> np.ndarray:
    """Entries per block of ``block`` along ``axis`` (the last may be shorter), shaped to divide block sums."""
    sizes = np.diff(np.r_[np.arange(0, length, block), length]).astype(np.float32)
    return sizes.reshape([-1 if a == axis else 1 for a in range(ndim)])


def _per_row(profile: np.ndarray, block: int, axis: int, length: int) -> np.ndarray:
    """Per-block class profiles repeated to each of ``length`` rows along ``axis``."""
    return np.repeat(profile, block, axis=axis).take(np.arange(length), axis=axis)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(-1, keepdims=True)
    return top[..., 0] + np.log(np.exp(z - top).sum(-1))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(z / 2))  # no overflow
