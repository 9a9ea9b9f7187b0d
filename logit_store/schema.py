"""On-disk format of a logit store: version, names, attribute keys and the checks run on open.

Layout of the Zarr v3 group (``N`` clips, ``C`` classes, ``T`` frames, ``K`` chunks of ``chunk_size`` rows)::

    zarr.json                       attrs["logit_store"]: format, format_version, dataset, fingerprint,
                                    classes, mids, chunk_size, created_at, kd_version; attrs["user"]
    clip_ids                        string [N]
    teachers/<name>/zarr.json       attrs["teacher"]: codec, codec_config, frames, frames_per_second,
                                    frame_codec, frame_codec_config (absent: the frames use codec), ...;
                                    attrs["attrs"]: what the writer recorded (checkpoint sha256, frontend, ...);
                                    attrs["metrics"]: quality metrics written once at the end
    teachers/<name>/clip            [N, C] in the codec's dtype, chunks of chunk_size rows
    teachers/<name>/clip_range      q8 only: [2, ceil(N/b), C] float16 (lo, hi) per block of b <= 128 rows
    teachers/<name>/frame           [N, T, C], chunks of a divisor of chunk_size rows (q8, qb: frame deltas)
    teachers/<name>/frame_range     q8: [2, N, ceil(T/64), C] float16 (lo, hi) per block of 64 frames;
                                    qb: [3, N, ceil(T/b), C] float16 (lo, hi, levels) per block of b frames
    teachers/<name>/done            string [K], one object per chunk: the JSON done record, written last

Every chunk object of a teacher belongs to exactly one store chunk, so writers of different chunks never
touch the same object and need no lock; a chunk counts as written only once its done record exists.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from logit_store.errors import IncompatibleStore, StoreError

FORMAT = "kd-logit-store"
FORMAT_VERSION = 1
ROOT_KEY = "logit_store"
LEVELS = ("clip", "frame")
TEACHER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# attributes recorded automatically: they differ between two runs of the same teacher, so re-adding ignores them
VOLATILE_TEACHER_KEYS = ("created_at", "kd_version")
FRAME_BLOCK = 64  # q8 ranges: one (lo, hi) per class per 64 frames of a clip
MAX_ROW_BLOCK = 128  # q8 ranges: one (lo, hi) per class per block of <= 128 clips (a divisor of chunk_size)


def now() -> str:
    """The timestamp recorded in ``created_at`` and ``written_at``: UTC, ISO 8601, whole seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def kd_version() -> str | None:
    """The installed ``kd-audio`` version recorded with a store and each teacher (``None`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kd-audio")
    except PackageNotFoundError:
        return None


def check_root_attrs(attrs: dict[str, Any], url: str) -> dict[str, Any]:
    """The store's own attributes, or :class:`IncompatibleStore` naming what is wrong."""
    meta = attrs.get(ROOT_KEY)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IncompatibleStore(f"{url} is a Zarr group but not a kd logit store (no '{ROOT_KEY}' attributes)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IncompatibleStore(
            f"{url} is a logit store of format version {version}; this kd reads version {FORMAT_VERSION} only"
        )
    return meta


def check_teacher_name(name: str) -> None:
    if not isinstance(name, str) or not TEACHER_NAME.match(name):
        raise StoreError(f"teacher name {name!r} must start with a letter or digit and use only [A-Za-z0-9_.-]")


def codec_config(info: dict[str, Any], level: str) -> dict[str, Any]:
    """The recorded codec config of ``level`` of a teacher: its frame codec's, else (older teachers) its codec's."""
    if level == "frame" and "frame_codec_config" in info:
        return info["frame_codec_config"]
    return info["codec_config"]


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise StoreError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
