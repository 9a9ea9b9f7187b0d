"""Decoded rows of the logit store: per teacher level, a whole float32 array while it fits the cache budget,
else an LRU of decoded chunks; and the cache that shares one byte budget among a handle's readers."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from logit_store.codecs import Codec
from logit_store.registry import get_codec
from logit_store.schema import codec_config

__all__ = ["DecodedCache", "Reader"]


class Reader:
    """Decoded rows of one teacher level: a whole float32 array while it fits, else an LRU of decoded chunks.

    ``data`` is the level's Zarr array (``clip`` or ``frame``), ``ranges`` its ``*_range`` array (``q8``, ``qb``),
    ``row_block`` the teacher's rows per clip-range block, ``budget`` the bytes of decoded rows it may keep.
    ``views > 1``: the arrays have a view axis after the row axis, and :meth:`gather` can pick one view per row.
    """

    def __init__(self, data, ranges, codec: Codec, level: str, row_block: int, budget: int, views: int = 1) -> None:
        self.data, self.ranges, self.codec, self.level, self.row_block = data, ranges, codec, level, row_block
        self.views = views
        self.rows_per_chunk = data.chunks[0]
        self.num_rows = data.shape[0]
        self.shape = (*data.shape[:-1], codec.decoded_width(data.shape[-1]))  # of the decoded logits
        row_bytes = int(np.prod(self.shape[1:])) * 4
        self.resident = self.num_rows * row_bytes <= budget
        self.cost = self.num_rows * row_bytes if self.resident else budget
        self.capacity = max(1, budget // max(1, self.rows_per_chunk * row_bytes))
        self.full: np.ndarray | None = None
        self.lru: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def of_teacher(cls, group, info: dict[str, Any], level: str, budget: int) -> Reader:
        """The reader of ``level`` of the teacher group ``group`` whose recorded settings are ``info``."""
        return cls(group[level], group.get(f"{level}_range", None), get_codec(codec_config(info, level)), level,
                   info["row_block"], budget, int(info.get("views", 1)))

    def decode_rows(self, start: int, stop: int) -> np.ndarray:
        """Decode stored rows ``[start, stop)``; raises zarr/codec errors on corrupt objects."""
        stored = self.data[start:stop]
        if self.level == "clip":
            ranges = self.ranges[:, start // self.row_block : -(-stop // self.row_block)] \
                if self.codec.uses_ranges else None
            return self.codec.decode(stored, ranges, 0, self.row_block)
        ranges = self.ranges[:, start:stop] if self.codec.uses_ranges else None
        if self.views == 1:
            return self.codec.decode(stored, ranges, 1, self.codec.frame_block)
        flat = stored.reshape(-1, *stored.shape[2:])  # every view a row of its own: [n * V, T, C]
        if ranges is not None:
            ranges = ranges.reshape(len(ranges), -1, *ranges.shape[3:])
        return self.codec.decode(flat, ranges, 1, self.codec.frame_block).reshape(stored.shape)

    def gather(self, rows: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Decoded float32 logits of ``rows`` (any order, repeats allowed).

        ``views`` (one index per row, with a view axis only): that view of each row, without the view axis.
        """
        if self.resident:
            if self.full is None:
                self.full = self._decode_all()
            if views is None:
                return self.full.take(rows, axis=0)
            flat = self.full.reshape(-1, *self.full.shape[2:])  # a view: row r, view v is flat row r * V + v
            return flat.take(rows * self.views + views, axis=0)
        out = np.empty((len(rows), *self.shape[1 if views is None else 2:]), np.float32)
        chunk_of = rows // self.rows_per_chunk
        for chunk in np.unique(chunk_of):
            block = self._chunk(int(chunk))
            where = np.nonzero(chunk_of == chunk)[0]
            local = rows[where] - chunk * self.rows_per_chunk
            out[where] = block[local] if views is None else block[local, views[where]]
        return out

    def _decode_all(self) -> np.ndarray:
        full = np.empty(self.shape, np.float32)
        step = self.rows_per_chunk * max(1, 64 * 1024**2 // max(1, self.rows_per_chunk * full[0].nbytes))
        for start in range(0, self.num_rows, step):
            stop = min(self.num_rows, start + step)
            full[start:stop] = self.decode_rows(start, stop)
        return full

    def _chunk(self, chunk: int) -> np.ndarray:
        if chunk in self.lru:
            self.lru.move_to_end(chunk)
            return self.lru[chunk]
        start = chunk * self.rows_per_chunk
        block = self.decode_rows(start, min(self.num_rows, start + self.rows_per_chunk))
        self.lru[chunk] = block
        while len(self.lru) > self.capacity:
            self.lru.popitem(last=False)
        return block


class DecodedCache:
    """The readers of one store handle, keyed by ``(teacher, level)``, sharing ``budget`` bytes of decoded rows.

    A reader takes what is left of the budget when it is first needed: the whole level if it fits, else the
    rest for its chunk LRU. Dropping a teacher's readers (its rows changed on disk) returns their share.
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.used = 0
        self.readers: dict[tuple[str, str], Reader] = {}

    def __len__(self) -> int:
        return len(self.readers)

    def __getitem__(self, key: tuple[str, str]) -> Reader:
        return self.readers[key]

    def get(self, teacher: str, level: str) -> Reader | None:
        """The reader of ``(teacher, level)`` if it was made already."""
        return self.readers.get((teacher, level))

    def reader(self, teacher: str, level: str, make: Callable[[int], Reader]) -> Reader:
        """The reader of ``(teacher, level)``, made by ``make(bytes left of the budget)`` on first use."""
        key = (teacher, level)
        if key not in self.readers:
            reader = make(max(0, self.budget - self.used))
            self.used += reader.cost
            self.readers[key] = reader
        return self.readers[key]

    def drop(self, teacher: str) -> None:
        """Forget the decoded rows of ``teacher`` (all levels)."""
        for key in [key for key in self.readers if key[0] == teacher]:
            self.used -= self.readers.pop(key).cost
