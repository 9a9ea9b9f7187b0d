"""Writing teacher logits: the arrays of a new teacher, and one chunk's checks and codec encoding.

Every object a chunk writes belongs to that chunk alone (clip rows, their ``clip_range`` blocks, frame rows
and their ``frame_range`` rows), so writers of different chunks need no lock. The done record that marks a
chunk written is :mod:`logit_store.progress`'s business and comes after everything here.

A teacher of a store with ``V > 1`` views per clip has a view axis after the clip axis (``[N, V, C]``,
``[N, V, T, C]``) and codes every view of a clip as a row of its own: clip ranges per block of clips *and*
view (the codec's blocks run along the clip axis, the view axis rides along), frame logits coded as
``[n * V, T, C]``. A store chunk still holds ``chunk_size`` clips, all their views.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from logit_store import storage
from logit_store.codecs import Codec
from logit_store.errors import InvalidLogits, preview
from logit_store.schema import MAX_ROW_BLOCK

__all__ = ["FRAME_CHUNK_BYTES", "check_logits", "create_level_arrays", "fill_invalid", "row_block", "write_levels"]

FRAME_CHUNK_BYTES = 16 * 1024**2  # target size of one stored frame chunk before compression


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def row_block(chunk_size: int) -> int:
    """Rows per block of ``clip_range`` (q8): the largest divisor of ``chunk_size`` up to 128."""
    return largest_divisor_at_most(chunk_size, MAX_ROW_BLOCK)


def create_level_arrays(group, codecs: dict[str, Codec], num_clips: int, num_classes: int, chunk_size: int,
                        block: int, frames: int | None, views: int = 1) -> None:
    """The logit arrays of a new teacher (``clip``, and ``frame`` when ``frames``), with their codecs' ranges.

    ``codecs`` maps each level to its codec; ``block`` is the clips per ``clip_range`` block; ``views > 1``
    adds a view axis after the clip axis of every array (none for a single view: the original layout).
    """
    n, c, chunk = num_clips, num_classes, chunk_size
    v = () if views == 1 else (views,)
    codec = codecs["clip"]
    width = codec.stored_width(c)
    storage.create_codec_array(group, "clip", (n, *v, width), codec.dtype, (chunk, *v, width), codec.zstd_level)
    if codec.uses_ranges:
        storage.create_codec_array(group, "clip_range", (codec.range_fields, -(-n // block), *v, c), np.float16,
                                   (codec.range_fields, chunk // block, *v, c))
    if frames:
        t, codec = frames, codecs["frame"]
        rows = largest_divisor_at_most(chunk, max(1, FRAME_CHUNK_BYTES // (views * t * c * codec.dtype.itemsize)))
        storage.create_codec_array(group, "frame", (n, *v, t, c), codec.dtype, (rows, *v, t, c), codec.zstd_level)
        if codec.uses_ranges:
            g, k = -(-t // codec.frame_block), codec.range_fields
            storage.create_codec_array(group, "frame_range", (k, n, *v, g, c), np.float16, (k, rows, *v, g, c))


def check_logits(x, shape: tuple[int, ...], what: str, ids: Sequence[str], valid: np.ndarray) -> np.ndarray:
    """``x`` as float32 of ``shape``, or ``InvalidLogits`` for a wrong shape or NaN/inf in a valid row."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape != shape:
        raise InvalidLogits(f"{what} has shape {x.shape}, expected {shape}")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    bad = [ids[i] for i in np.nonzero(valid & ~finite)[0]]
    if bad:
        raise InvalidLogits(f"{what} holds NaN/inf for {len(bad)} clip(s): {preview(bad)}; nothing was written")
    return x


def fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Invalid rows take a valid row's values so they do not widen the q8 ranges (they are never read)."""
    if valid.all() or not valid.any():
        return x if valid.any() else np.zeros_like(x)
    x = x.copy()
    x[~valid] = x[np.argmax(valid)]
    return x


def write_levels(group, codecs: dict[str, Codec], info: dict[str, Any], rows: slice, arrays: dict[str, np.ndarray],
                 valid: np.ndarray) -> None:
    """Encode (``codecs[level]``) and store the checked logits ``arrays`` (``{"clip": ..., "frame": ...}``)
    of the rows ``rows``."""
    for level, x in arrays.items():
        x, codec = fill_invalid(x, valid), codecs[level]
        if level == "clip":
            block = info["row_block"]
            stored, ranges = codec.encode(x, 0, block)
            group[level][rows] = stored
            if ranges is not None:
                group["clip_range"][:, rows.start // block : -(-rows.stop // block)] = ranges
            continue
        stored, ranges = codec.encode(x.reshape(-1, *x.shape[-2:]), 1, codec.frame_block)  # [n (* V), T, C]
        group[level][rows] = stored.reshape(x.shape)
        if ranges is not None:
            group["frame_range"][:, rows] = ranges.reshape(len(ranges), *x.shape[:-2], *ranges.shape[2:])
