"""Clip id -> row lookup of the logit store: a vectorised hash index with an exact dictionary fallback."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from logit_store.errors import MissingIds

__all__ = ["IdIndex"]


class IdIndex:
    """Row of each clip id by a vectorised hash lookup, for the per-batch id -> row mapping of reads.

    A dict of Python strings costs several dependent cache misses per id (index slot, entry, key string,
    value int), one id at a time; at AudioSet sizes that alone took longer than gathering the rows. Here the
    ids live in one fixed-width unicode array viewed as 64-bit words, hashed in NumPy; hashes are sorted and
    bucketed by their top bits (about two buckets per id), so a batch looks up all its ids in a handful of
    vectorised gathers. Every hit is verified word by word against the stored id, so the result is exact:
    :meth:`find` returns ``None`` (never a wrong row) whenever an id is absent, collides, or cannot be
    represented (not a string, longer than every stored id, trailing NUL characters), and :meth:`rows`
    then falls back to an exact dict lookup that also names the missing ids.

    ``ids`` must be unique strings (the store checks this on creation).
    """

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        n = len(ids)
        width = max(1, max(map(len, ids), default=0))
        self.dtype = np.dtype(f"=U{width + width % 2}")  # an even number of UCS4 characters: whole 64-bit words
        table = np.array(ids, dtype=self.dtype).reshape(n)
        # NumPy drops trailing NULs; such ids (if any) would not round-trip, so they disable the index
        self.usable = n > 0 and bool((np.strings.str_len(table) == np.fromiter(map(len, ids), np.int64, n)).all())
        self.words = table.view(np.uint64).reshape(n, -1)
        # multiplicative hashing: a random odd-weighted word sum (mod 2**64) whose top bits pick the bucket
        self.mult = np.random.default_rng(0x6B64).integers(0, 2**62, self.words.shape[1], dtype=np.uint64) * 2 + 1
        hashes = self.words @ self.mult
        bits = max(1, int(np.ceil(np.log2(max(1, 2 * n)))))
        self.shift = np.uint64(64 - bits)
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        counts = np.bincount((sorted_hashes >> self.shift).astype(np.int64), minlength=1 << bits)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.span = np.arange(int(counts.max()))
        # candidates run up to ``span`` past a bucket's start; padding past the end points at row 0 and is
        # rejected by the word check like any other wrong candidate
        self.sorted_hashes = np.concatenate([sorted_hashes, np.zeros(len(self.span), np.uint64)])
        self.order = np.concatenate([order, np.zeros(len(self.span), order.dtype)])
        self._exact: dict[str, int] | None = None

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id (int64), or :class:`MissingIds` naming the absent ids (and anything not a string)."""
        rows = self.find(ids)
        return self._rows_by_dict(ids) if rows is None else rows

    def find(self, ids: Sequence[str]) -> np.ndarray | None:
        """Rows of ``ids`` (a list of ``str`` or a 1-D NumPy string array) when all are in the index, else ``None``."""
        query = self._as_words(ids) if self.usable else None
        if query is None:
            return None
        hashes = query @ self.mult
        starts = self.start[hashes >> self.shift]
        match = self.sorted_hashes[starts[:, None] + self.span] == hashes[:, None]
        rows = self.order[starts + match.argmax(axis=1)]
        if not (self.words.take(rows, axis=0) == query).all():
            return None
        return rows

    def _as_words(self, ids: Sequence[str]) -> np.ndarray | None:
        """``ids`` as rows of 64-bit words in the index's layout, or ``None`` if they cannot be matched exactly."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or ids.dtype.kind != "U" or ids.dtype.itemsize > self.dtype.itemsize:
                return None
            query = ids.astype(self.dtype, copy=False)
        else:
            if set(map(type, ids)) != {str}:
                return None
            query = np.array(ids, dtype=self.dtype)  # cuts longer ids and trailing NULs: caught by the lengths
            if sum(map(len, ids)) != int(np.strings.str_len(query).sum()):
                return None
        return query.view(np.uint64).reshape(len(query), self.words.shape[1])

    def _rows_by_dict(self, ids: Sequence[str]) -> np.ndarray:
        """The exact (slower) lookup behind :meth:`rows`, for batches the hash index does not resolve."""
        if self._exact is None:
            self._exact = {cid: i for i, cid in enumerate(self.ids)}
        index = self._exact
        try:
            return np.array(list(map(index.__getitem__, ids)), dtype=np.int64)
        except (KeyError, TypeError):
            missing = [i for i in ids if not isinstance(i, str) or i not in index]
            raise MissingIds(missing, len(ids)) from None
