"""Integrity check of a logit store: what is in storage, chunk by chunk, against what the done records claim.

:func:`verify` works from the store handle's public API (layout, teachers, their recorded settings) and
reads storage through its own read-only Zarr group (opened from the handle's URL and storage options), so
it sees every chunk finished so far by any process, whatever this handle has cached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from logit_store import storage, views
from logit_store.errors import preview
from logit_store.progress import DoneRecords
from logit_store.reader import Reader
from logit_store.registry import get_codec
from logit_store.schema import codec_config

__all__ = ["Problem", "StoreLayout", "verify"]


class StoreLayout(Protocol):
    """What :func:`verify` reads of a store handle (a :class:`logit_store.store.LogitStore`, which calls it): its
    location, layout and records, never its cached data. A protocol, so that this module need not import the
    store's."""

    url: str
    storage_options: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def clip_ids(self) -> list[str]: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def num_clips(self) -> int: ...

    @property
    def num_chunks(self) -> int: ...

    @property
    def views(self) -> dict[str, Any] | None: ...

    @property
    def num_views(self) -> int: ...

    @property
    def view_param_names(self) -> list[str] | None: ...

    @property
    def teachers(self) -> list[str]: ...

    def chunk_rows(self, index: int) -> slice: ...

    def teacher_info(self, name: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`LogitStore.verify`."""

    kind: str  # missing-chunk, corrupt-chunk, non-finite, shape, classes, incomplete, record, clip-ids, views
    message: str
    teacher: str | None = None
    chunk: int | None = None

    def __str__(self) -> str:
        where = ":".join(x for x in (self.teacher, None if self.chunk is None else f"chunk {self.chunk}") if x)
        return f"[{self.kind}] {where + ': ' if where else ''}{self.message}"


def verify(store: StoreLayout) -> list[Problem]:
    """Check every chunk: missing or undecodable objects of done chunks, NaN/inf, shapes, class counts."""
    problems = verify_root(store)
    root = storage.open_group(store.url, "r", store.storage_options)
    done: set[int] = set()
    for name in store.teachers:
        found, chunks = verify_teacher(store, root["teachers"][name], name)
        problems += found
        done |= chunks
    if store.views is not None:
        problems += verify_view_params(store, root, done)
    return problems


def verify_root(store: StoreLayout) -> list[Problem]:
    problems = []
    meta = store.meta
    if len(meta["classes"]) != meta["num_classes"]:
        problems.append(Problem("classes", f"{len(meta['classes'])} class names for {meta['num_classes']} classes"))
    try:
        ids = store.clip_ids
    except Exception as e:  # noqa: BLE001 -- vlen-utf8 decoding of a damaged id object fails in many ways
        return problems + [Problem("clip-ids", f"clip ids cannot be read: {type(e).__name__}: {e}")]
    if len(ids) != meta["num_clips"]:
        problems.append(Problem("clip-ids", f"{len(ids)} clip ids for {meta['num_clips']} clips"))
    if len(set(ids)) != len(ids):
        problems.append(Problem("clip-ids", f"{len(ids) - len(set(ids))} repeated clip ids"))
    return problems


def verify_view_params(store: StoreLayout, root, done: set[int]) -> list[Problem]:
    """Findings on the view parameters: their array, and their presence in every chunk any teacher has done."""
    shape = (store.num_clips, store.num_views, len(store.view_param_names or []))
    if views.ARRAY not in root or tuple(root[views.ARRAY].shape) != shape:
        got = tuple(root[views.ARRAY].shape) if views.ARRAY in root else None
        return [Problem("views", f"view parameters have shape {got}, expected {shape}")]
    array = root[views.ARRAY]
    stored = storage.stored_chunk_keys(array)
    problems = []
    for k in sorted(done):
        rows = store.chunk_rows(k)
        if missing_objects(array, views.ARRAY, rows, 1, stored):
            problems.append(Problem("views", "view parameters missing although a teacher marked the chunk done",
                                    chunk=k))
            continue
        try:
            values = array[rows]
        except storage.DECODE_ERRORS as e:
            problems.append(Problem("views", f"view parameters cannot be decoded: {type(e).__name__}: {e}", chunk=k))
            continue
        if not np.isfinite(values).all():
            problems.append(Problem("views", "view parameters hold NaN/inf", chunk=k))
    return problems


def verify_teacher(store: StoreLayout, group, name: str) -> tuple[list[Problem], set[int]]:
    """Findings for teacher ``name`` whose Zarr group is ``group``, and the chunks its done records mark done."""
    info = store.teacher_info(name)
    n, c = store.num_clips, len(store.classes)
    problems = []
    if info["num_classes"] != c:
        problems.append(Problem("classes", f"{info['num_classes']} classes, the store has {c}", name))
    v = () if store.num_views == 1 else (store.num_views,)
    if info.get("views", 1) != store.num_views:
        problems.append(Problem("views", f"{info.get('views', 1)} views per clip, the store has {store.num_views}",
                                name))
    clip_width = get_codec(codec_config(info, "clip")).stored_width(c)
    expected = {"clip": (n, *v, clip_width), "frame": (n, *v, info["frames"], c)}
    for level in info["levels"]:
        if level not in group or tuple(group[level].shape) != expected[level]:
            got = tuple(group[level].shape) if level in group else None
            problems.append(Problem("shape", f"{level} logits have shape {got}, expected {expected[level]}", name))
    if problems:
        return problems, set()
    done = DoneRecords(group["done"], store.num_chunks)
    records = done.current()
    problems += [Problem("record", "done record cannot be parsed (the chunk will be rewritten)", name, k)
                 for k in done.unparseable()]
    arrays = {level: {a: group[a] for a in (level, f"{level}_range") if a in group} for level in info["levels"]}
    stored = {a: storage.stored_chunk_keys(array) for level_arrays in arrays.values()
              for a, array in level_arrays.items()}
    for k, record in sorted(records.items()):
        problems += verify_chunk(store, group, info, name, k, record, arrays, stored)
    missing = store.num_chunks - len(records)
    if missing:
        problems.append(Problem("incomplete", f"{missing} of {store.num_chunks} chunks are not done", name))
    return problems, set(records)


def row_axis(array_name: str) -> int:
    return 1 if array_name.endswith("_range") else 0  # range arrays lead with the (lo, hi) axis


def missing_objects(array, array_name: str, rows: slice, row_block: int, stored: set[str]) -> list[int]:
    """Row-axis chunk indices of the objects of ``array`` that hold ``rows`` and are not in ``stored``."""
    per_entry = row_block if array_name == "clip_range" else 1
    axis = row_axis(array_name)
    axis_chunk = array.chunks[axis]
    first, last = rows.start // per_entry // axis_chunk, (rows.stop - 1) // per_entry // axis_chunk
    return [i for i in range(first, last + 1)
            if any(storage.chunk_key(array, coords) not in stored for coords in storage.chunk_coords_at(array, axis, i))]


def verify_chunk(store: StoreLayout, group, info: dict[str, Any], name: str, k: int, record: dict[str, Any],
                 arrays: dict[str, dict[str, Any]], stored: dict[str, set[str]]) -> list[Problem]:
    rows = store.chunk_rows(k)
    if record.get("rows") != [rows.start, rows.stop]:
        return [Problem("record", f"done record covers rows {record.get('rows')}, expected "
                                  f"{[rows.start, rows.stop]}", name, k)]
    valid = np.ones(rows.stop - rows.start, bool)
    valid[np.asarray(record["invalid"], np.int64)] = False
    ids = store.clip_ids[rows]
    unexplained = [ids[i] for i in np.nonzero(~valid)[0] if ids[i] not in record["failures"]]
    problems = []
    if unexplained:
        problems.append(Problem("record", f"{len(unexplained)} invalid rows without a failure reason", name, k))
    if not valid.any():
        return problems
    for level, level_arrays in arrays.items():
        missing = {a: missing_objects(array, a, rows, info["row_block"], stored[a]) for a, array in level_arrays.items()}
        missing = {a: m for a, m in missing.items() if m}
        if missing:
            detail = "; ".join(f"{a} objects {m}" for a, m in missing.items())
            problems.append(Problem("missing-chunk", f"{detail} missing although the chunk is marked done", name, k))
            continue
        try:
            values = Reader.of_teacher(group, info, level, 0).decode_rows(rows.start, rows.stop)
        except storage.DECODE_ERRORS as e:
            problems.append(Problem("corrupt-chunk", f"{level} logits cannot be decoded: {type(e).__name__}: {e}",
                                    name, k))
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        bad = [ids[i] for i in np.nonzero(valid & ~finite)[0]]
        if bad:
            problems.append(Problem("non-finite", f"{level} logits hold NaN/inf for {len(bad)} clip(s): "
                                                  f"{preview(bad)}", name, k))
    return problems
