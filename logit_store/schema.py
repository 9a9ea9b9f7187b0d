"""On-disk format of a logit store: version, names, attribute keys and the checks run on open.

Layout of the Zarr v3 group (``N`` clips, ``C`` classes, ``T`` frames, ``V`` views per clip, ``P`` view
parameters, ``M`` store chunks of ``chunk_size`` clips)::

    zarr.json                       attrs["logit_store"]: format, format_version, dataset, fingerprint,
                                    classes, mids, chunk_size, created_at, kd_version, and for a store with
                                    views: views (the configuration they were drawn from, "count" = V) and
                                    view_param_names (P names); attrs["user"]
    clip_ids                        string [N]
    view_params                     stores with views only: [N, V, P] float32, chunks of chunk_size clips
                                    (NaN until written; written with a chunk's logits by any of its teachers)
    teachers/<name>/zarr.json       attrs["teacher"]: codec, codec_config, frames, frames_per_second,
                                    frame_codec, frame_codec_config (absent: the frames use codec),
                                    views (V, absent when V = 1), ...;
                                    attrs["attrs"]: what the writer recorded (checkpoint sha256, frontend, ...);
                                    attrs["metrics"]: quality metrics written once at the end
    teachers/<name>/clip            [N, C] (V > 1: [N, V, C]) in the codec's dtype, chunks of chunk_size clips
    teachers/<name>/clip_range      q8 only: [2, ceil(N/b), C] (V > 1: [2, ceil(N/b), V, C]) float16 (lo, hi)
                                    per block of b <= 128 clips (and per view)
    teachers/<name>/frame           [N, T, C] (V > 1: [N, V, T, C]), chunks of a divisor of chunk_size clips
                                    (q8, qb: frame deltas)
    teachers/<name>/frame_range     q8: [2, N, ceil(T/64), C] float16 (lo, hi) per block of 64 frames;
                                    qb: [3, N, ceil(T/b), C] float16 (lo, hi, levels) per block of b frames;
                                    V > 1: a view axis after N ([k, N, V, ceil(T/b), C])
    teachers/<name>/done            string [M], one object per chunk: the JSON done record, written last

Every chunk object of a teacher (and of ``view_params``) belongs to exactly one store chunk, so writers of
different chunks never touch the same object and need no lock; a chunk counts as written only once its done
record exists. With ``V`` views every view of a clip is coded like a row of a single-view store (ranges per
view), so the bytes per view-logit are those of a single view.

Format version 1 is the single-view layout; stores with more than one view per clip are version 2, so that
code which only knows version 1 refuses them instead of misreading their view axis. Stores with one view (or
none) are still written as version 1.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Literal, get_args

from logit_store.errors import IncompatibleStore, StoreError

FORMAT = "kd-logit-store"
FORMAT_VERSION = 2  # the newest version written: stores with a view axis
SINGLE_VIEW_FORMAT_VERSION = 1  # stores without a view axis, readable by every kd
READABLE_VERSIONS = (SINGLE_VIEW_FORMAT_VERSION, FORMAT_VERSION)
ROOT_KEY = "logit_store"
Level = Literal["clip", "frame"]  # clip logits [N, C], frame logits [N, T, C]
LEVELS: tuple[Level, ...] = get_args(Level)
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
    if version not in READABLE_VERSIONS:
        raise IncompatibleStore(
            f"{url} is a logit store of format version {version}; this kd reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return meta


def format_version(num_views: int) -> int:
    """The format version of a store with ``num_views`` views per clip (see the module doc)."""
    return FORMAT_VERSION if num_views > 1 else SINGLE_VIEW_FORMAT_VERSION


def check_teacher_name(name: str) -> None:
    if not isinstance(name, str) or not TEACHER_NAME.match(name):
        raise StoreError(f"teacher name {name!r} must start with a letter or digit and use only [A-Za-z0-9_.-]")


def codec_config(info: dict[str, Any], level: str) -> dict[str, Any]:
    """The recorded codec config of ``level`` of a teacher: its frame codec's, else (older teachers) its codec's."""
    if level == "frame" and "frame_codec_config" in info:
        return info["frame_codec_config"]
    return info["codec_config"]


def check_level(level: Level) -> None:
    if level not in LEVELS:
        raise StoreError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
