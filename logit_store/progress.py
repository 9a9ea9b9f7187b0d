"""Progress of a teacher: the done record of each finished chunk, written last by ``write_chunk``.

The ``done`` array of a teacher holds one string object per store chunk (``chunks=(1,)``); a chunk counts
as written once its object holds a parseable JSON record. :class:`DoneRecords` reads a teacher's records
once per store handle (one listing of the ``done`` array, then one batched read of the listed objects),
adds the records of the handle's own writes as they happen, and reads again only when asked
(:meth:`DoneRecords.reload`, for chunks that other processes finished since). Records never change once
written, so a reload reads only objects it has not parsed yet.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from logit_store import schema, storage

__all__ = ["DoneRecords", "create_done_array", "failures_of", "make_record", "valid_rows"]


def create_done_array(group, num_chunks: int):
    """The ``done`` array of a new teacher group: one string object per store chunk."""
    return group.create_array("done", shape=(num_chunks,), dtype=str, chunks=(1,),
                              chunk_key_encoding={"name": "default", "separator": "/"})


def make_record(chunk: int, rows: slice, invalid: np.ndarray, failures: dict[str, str],
                levels: list[str]) -> dict[str, Any]:
    """The done record of chunk ``chunk``: its rows, the invalid rows (relative) and why they failed."""
    return {"chunk": chunk, "rows": [rows.start, rows.stop], "invalid": [int(i) for i in invalid],
            "failures": failures, "levels": list(levels), "written_at": schema.now()}


class DoneRecords:
    """The done records of one teacher as this handle knows them (see the module doc).

    ``stored`` holds the chunk indices whose done object exists (listed, or written by this handle);
    ``records`` the parsed records. A listed object that does not parse (a half-written record) is in
    ``stored`` but not in ``records``: the chunk is not done. ``listings`` counts the listings made.
    """

    def __init__(self, done_array, num_chunks: int) -> None:
        self.array, self.num_chunks = done_array, num_chunks
        self.loaded = False
        self.listings = 0
        self.stored: set[int] = set()
        self.records: dict[int, dict[str, Any]] = {}

    def current(self) -> dict[int, dict[str, Any]]:
        """The records, read from storage the first time only."""
        if not self.loaded:
            self.reload()
        return self.records

    def reload(self) -> bool:
        """Read the records of chunks finished since the last read (by any process); ``True`` if any were new."""
        stored = list_done(self.array, self.num_chunks)
        self.listings += 1
        self.loaded = True
        self.stored |= stored
        new = sorted(stored - set(self.records))
        if not new:
            return False
        before = len(self.records)
        for k, text in zip(new, read_objects(self.array, new), strict=True):
            record = parse_record(text)
            if record is not None:
                self.records[k] = record
        return len(self.records) != before

    def add(self, chunk: int, record: dict[str, Any]) -> None:
        """Record a chunk this handle has just written (its done object is stored)."""
        self.stored.add(chunk)
        self.records[chunk] = record

    def unparseable(self) -> list[int]:
        """Chunks whose done object exists but holds no readable record."""
        return sorted(self.stored - set(self.records))


def list_done(done_array, num_chunks: int) -> set[int]:
    """Indices of the chunks whose done object exists: one listing of ``done_array``, keys from its metadata."""
    keys = storage.stored_chunk_keys(done_array)
    return {k for k in range(num_chunks) if storage.chunk_key(done_array, (k,)) in keys}


def read_objects(done_array, chunks: list[int]) -> list[Any]:
    """The done objects of ``chunks`` in one batched read; one by one if that fails, ``None`` for a damaged one."""
    try:
        return list(done_array.get_coordinate_selection(np.array(chunks)))
    except storage.DECODE_ERRORS:
        pass
    out = []
    for k in chunks:
        try:
            out.append(done_array[k])
        except storage.DECODE_ERRORS:
            out.append(None)  # not a record: the chunk counts as not done and will be written again
    return out


def parse_record(text: Any) -> dict[str, Any] | None:
    """The record in a done object, or ``None`` for a half-written (or empty) one."""
    if text is None:
        return None
    try:
        record = json.loads(str(text))
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def valid_rows(records: dict[int, dict[str, Any]], num_clips: int) -> np.ndarray:
    """Mask of the rows that hold logits: the rows of done chunks, less their invalid rows."""
    ok = np.zeros(num_clips, bool)
    for record in records.values():
        start, stop = record["rows"]
        ok[start:stop] = True
        ok[np.asarray(record["invalid"], np.int64) + start] = False
    return ok


def failures_of(records: dict[int, dict[str, Any]]) -> dict[str, str]:
    """Clip id -> reason for every clip the writers of ``records`` could not produce logits for."""
    out: dict[str, str] = {}
    for _, record in sorted(records.items()):
        out.update(record["failures"])
    return out
