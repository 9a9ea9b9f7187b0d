"""``LogitStore``: teacher logits for a fixed list of clips in a Zarr v3 group at any fsspec URL.

Teachers run once and write chunk-aligned regions (one chunk = ``chunk_size`` consecutive clips) from any
number of processes without a lock; each chunk ends with a small done record, so an interrupted job resumes
where it stopped. Students read shuffled batches by clip id (mapped to rows by a vectorised hash index,
:class:`_IdIndex`) through a per-process cache of decoded arrays (whole arrays while they fit the cache
budget, an LRU of decoded chunks beyond it). Ensembles of teachers
are views computed at read time. See :mod:`logit_store.schema` for the layout and
:mod:`logit_store.codecs` for the 8-bit codec.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from logit_store import schema
from logit_store.codecs import Codec, get_codec
from logit_store.errors import (
    DatasetMismatch,
    IncompatibleStore,
    InvalidLogits,
    MissingIds,
    StoreError,
    StoreNotFound,
    TeacherConflict,
    UnknownTeacher,
    UnwrittenRows,
    VocabularyMismatch,
    preview,
)

__all__ = ["DEFAULT_CACHE_BYTES", "LogitStore", "Problem"]

DEFAULT_CACHE_BYTES = 2 * 1024**3
FRAME_BLOCK = 64  # q8 ranges: one (lo, hi) per class per 64 frames of a clip
MAX_ROW_BLOCK = 128  # q8 ranges: one (lo, hi) per class per block of <= 128 clips
FRAME_CHUNK_BYTES = 16 * 1024**2  # target size of one stored frame chunk before compression


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`LogitStore.verify`."""

    kind: str  # missing-chunk, corrupt-chunk, non-finite, shape, classes, incomplete, record, clip-ids
    message: str
    teacher: str | None = None
    chunk: int | None = None

    def __str__(self) -> str:
        where = ":".join(x for x in (self.teacher, None if self.chunk is None else f"chunk {self.chunk}") if x)
        return f"[{self.kind}] {where + ': ' if where else ''}{self.message}"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _kd_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kd-audio")
    except PackageNotFoundError:
        return None


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _open_zarr_store(url: str, read_only: bool, storage_options: dict[str, Any] | None):
    """Zarr's LocalStore for local paths (no async wrapper, creates folders), its FsspecStore for the rest."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem
    from zarr.storage import FsspecStore, LocalStore

    fs, path = url_to_fs(url, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(url, storage_options=storage_options or None, read_only=read_only)


def _compressors():
    """zstd, then a crc32c checksum so that a damaged object fails to decode instead of reading garbage."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=3), Crc32cCodec()]


class _IdIndex:
    """Row of each clip id by a vectorised hash lookup, for the per-batch id -> row mapping of reads.

    A dict of Python strings costs several dependent cache misses per id (index slot, entry, key string,
    value int), one id at a time; at AudioSet sizes that alone took longer than gathering the rows. Here the
    ids live in one fixed-width unicode array viewed as 64-bit words, hashed in NumPy; hashes are sorted and
    bucketed by their top bits (about two buckets per id), so a batch looks up all its ids in a handful of
    vectorised gathers. Every hit is verified word by word against the stored id, so the result is exact:
    :meth:`find` returns ``None`` (never a wrong row) whenever an id is absent, collides, or cannot be
    represented (not a string, longer than every stored id, trailing NUL characters), and the caller falls
    back to an exact dict lookup that also names the missing ids.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        n = len(ids)
        width = max(1, max(map(len, ids)))
        self.dtype = np.dtype(f"=U{width + width % 2}")  # an even number of UCS4 characters: whole 64-bit words
        table = np.array(ids, dtype=self.dtype)
        # NumPy drops trailing NULs; such ids (if any) would not round-trip, so they disable the index
        self.usable = bool((np.strings.str_len(table) == np.fromiter(map(len, ids), np.int64, n)).all())
        self.words = table.view(np.uint64).reshape(n, -1)
        # multiplicative hashing: a random odd-weighted word sum (mod 2**64) whose top bits pick the bucket
        self.mult = np.random.default_rng(0x6B64).integers(0, 2**62, self.words.shape[1], dtype=np.uint64) * 2 + 1
        hashes = self.words @ self.mult
        bits = max(1, int(np.ceil(np.log2(2 * n))))
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

    def find(self, ids: Sequence[str]) -> np.ndarray | None:
        """Rows of ``ids`` (a list of ``str`` or a 1-D NumPy string array) when all are in the index, else ``None``."""
        query = self._as_words(ids)
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
        return query.view(np.uint64).reshape(len(query), -1)


class _Reader:
    """Decoded rows of one teacher level: a whole float32 array while it fits, else an LRU of decoded chunks."""

    def __init__(self, store: LogitStore, teacher: str, level: str, budget: int) -> None:
        group = store._teacher_group(teacher)
        info = store.teacher_info(teacher)
        self.data = group[level]
        self.ranges = group.get(f"{level}_range", None)
        self.codec = get_codec(info["codec_config"])
        self.level = level
        self.rows_per_chunk = self.data.chunks[0]
        self.row_block = info["row_block"]
        self.num_rows = self.data.shape[0]
        row_bytes = int(np.prod(self.data.shape[1:])) * 4
        self.resident = self.num_rows * row_bytes <= budget
        self.cost = self.num_rows * row_bytes if self.resident else budget
        self.capacity = max(1, budget // max(1, self.rows_per_chunk * row_bytes))
        self.full: np.ndarray | None = None
        self.lru: OrderedDict[int, np.ndarray] = OrderedDict()

    def decode_rows(self, start: int, stop: int) -> np.ndarray:
        """Decode stored rows ``[start, stop)``; raises zarr/codec errors on corrupt objects."""
        stored = self.data[start:stop]
        ranges = None
        if self.codec.uses_ranges:
            if self.level == "clip":
                ranges = self.ranges[:, start // self.row_block : -(-stop // self.row_block)]
            else:
                ranges = self.ranges[:, start:stop]
        if self.level == "clip":
            return self.codec.decode(stored, ranges, 0, self.row_block)
        return self.codec.decode(stored, ranges, 1, FRAME_BLOCK)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        if self.resident:
            if self.full is None:
                self.full = self._decode_all()
            return self.full.take(rows, axis=0)
        out = np.empty((len(rows), *self.data.shape[1:]), np.float32)
        chunk_of = rows // self.rows_per_chunk
        for chunk in np.unique(chunk_of):
            block = self._chunk(int(chunk))
            where = np.nonzero(chunk_of == chunk)[0]
            out[where] = block[rows[where] - chunk * self.rows_per_chunk]
        return out

    def _decode_all(self) -> np.ndarray:
        full = np.empty(self.data.shape, np.float32)
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


class LogitStore:
    """Teacher logits (clip ``[N, C]`` and frame ``[N, T, C]``) for a fixed list of clip ids.

    A handle is cheap to pickle: it carries only the URL and options, and every process (DataLoader worker,
    dask worker) opens the Zarr group lazily on first use, after fork or unpickling.
    """

    def __init__(self, url: str, mode: str = "r", *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 storage_options: dict[str, Any] | None = None) -> None:
        if mode not in ("r", "r+"):
            raise StoreError(f"mode must be 'r' or 'r+', got {mode!r}")
        self.url, self.mode, self.cache_bytes = str(url), mode, int(cache_bytes)
        self.storage_options = dict(storage_options or {})
        self._reset()

    # --- process-local state ----------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._pid: int | None = None
        self._zroot = None
        self._fs_root: tuple[Any, str] | None = None
        self._meta: dict[str, Any] | None = None
        self._clip_ids: list[str] | None = None
        self._row_index: dict[str, int] | None = None
        self._id_index: _IdIndex | None = None
        self._teacher_cache: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, Any] = {}
        self._records: dict[str, dict[int, dict[str, Any]]] = {}
        self._readers: dict[tuple[str, str], _Reader] = {}
        self._cache_used = 0
        self._valid_cache: dict[str, np.ndarray | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "mode": self.mode, "cache_bytes": self.cache_bytes,
                "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"LogitStore({self.url!r}, mode={self.mode!r})"

    @property
    def _root(self):
        if self._zroot is None or self._pid != os.getpid():
            self._reset()
            self._pid = os.getpid()
            self._zroot = self._open_root()
        return self._zroot

    def _open_root(self):
        import zarr

        store = _open_zarr_store(self.url, self.mode == "r", self.storage_options)
        try:
            root = zarr.open_group(store, mode="r" if self.mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreNotFound(f"no logit store at {self.url}") from e
        except (zarr.errors.ContainsArrayError, ValueError, KeyError) as e:
            raise IncompatibleStore(f"{self.url} is not a readable logit store: {e}") from e
        self._meta = schema.check_root_attrs(dict(root.attrs), self.url)
        return root

    @property
    def _fs(self) -> tuple[Any, str]:
        if self._fs_root is None:
            from fsspec.core import url_to_fs

            fs, path = url_to_fs(self.url, **self.storage_options)
            self._fs_root = (fs, path.rstrip("/"))
        return self._fs_root

    # --- creation and opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str, clip_ids: Sequence[str], classes: Sequence[str], *, mids: Sequence[str] | None = None,
               dataset: str, dataset_fingerprint: str, chunk_size: int = 1024, overwrite: bool = False,
               storage_options: dict[str, Any] | None = None) -> LogitStore:
        """Create an empty store for ``clip_ids`` (unique) and the class vocabulary ``classes``."""
        import zarr

        clip_ids, classes = [str(i) for i in clip_ids], [str(c) for c in classes]
        _check_unique("clip ids", clip_ids)
        _check_unique("class names", classes)
        if not clip_ids or not classes:
            raise StoreError("a logit store needs at least one clip id and one class")
        if mids is not None and len(mids) != len(classes):
            raise VocabularyMismatch(f"{len(mids)} MIDs for {len(classes)} classes")
        if chunk_size < 1:
            raise StoreError(f"chunk_size must be >= 1, got {chunk_size}")
        store = _open_zarr_store(url, False, storage_options)
        if not overwrite:
            try:
                zarr.open_group(store, mode="r")
                raise StoreError(f"{url} already holds a Zarr group; pass overwrite=True to replace it")
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):
                pass
        root = zarr.open_group(store, mode="w")
        ids = root.create_array("clip_ids", shape=(len(clip_ids),), dtype=str, chunks=(min(len(clip_ids), 65536),))
        ids[:] = np.array(clip_ids, dtype=object)
        root.create_group("teachers")
        root.attrs.update({schema.ROOT_KEY: {
            "format": schema.FORMAT, "format_version": schema.FORMAT_VERSION, "dataset": dataset,
            "dataset_fingerprint": dataset_fingerprint, "num_clips": len(clip_ids), "num_classes": len(classes),
            "classes": classes, "mids": None if mids is None else [str(m) for m in mids],
            "chunk_size": int(chunk_size), "created_at": _now(), "kd_version": _kd_version(),
        }, "user": {}})
        return cls(url, mode="r+", storage_options=storage_options)

    @classmethod
    def open(cls, url: str, mode: str = "r", *, cache_bytes: int = DEFAULT_CACHE_BYTES,
             storage_options: dict[str, Any] | None = None) -> LogitStore:
        """Open an existing store (``StoreNotFound`` if none, ``IncompatibleStore`` for another format version)."""
        store = cls(url, mode, cache_bytes=cache_bytes, storage_options=storage_options)
        _ = store._root  # fail now, in the caller's process, rather than inside a worker
        return store

    # --- layout ---------------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        _ = self._root
        return self._meta

    @property
    def clip_ids(self) -> list[str]:
        if self._clip_ids is None:
            self._clip_ids = [str(x) for x in self._root["clip_ids"][:]]
        return self._clip_ids

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def mids(self) -> list[str] | None:
        return None if self.meta["mids"] is None else list(self.meta["mids"])

    @property
    def chunk_size(self) -> int:
        return int(self.meta["chunk_size"])

    @property
    def num_clips(self) -> int:
        return int(self.meta["num_clips"])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_clips // self.chunk_size)

    def chunk_rows(self, index: int) -> slice:
        if not 0 <= index < self.num_chunks:
            raise StoreError(f"chunk {index} out of range: the store has {self.num_chunks} chunks")
        return slice(index * self.chunk_size, min(self.num_clips, (index + 1) * self.chunk_size))

    def chunk_ids(self, index: int) -> list[str]:
        return self.clip_ids[self.chunk_rows(index)]

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row index of each id (``MissingIds`` naming the first few absent ids and their count)."""
        _ = self._root  # a forked child starts from fresh process-local state
        if self._id_index is None:
            self._id_index = _IdIndex(self.clip_ids)
        rows = self._id_index.find(ids) if self._id_index.usable else None
        return self._rows_by_dict(ids) if rows is None else rows

    def _rows_by_dict(self, ids: Sequence[str]) -> np.ndarray:
        """The exact (slower) lookup behind :meth:`rows_of`, for batches the hash index does not resolve."""
        if self._row_index is None:
            self._row_index = {cid: i for i, cid in enumerate(self.clip_ids)}
        index = self._row_index
        try:
            return np.array(list(map(index.__getitem__, ids)), dtype=np.int64)
        except (KeyError, TypeError):
            missing = [i for i in ids if not isinstance(i, str) or i not in index]
            raise MissingIds(missing, len(ids)) from None

    def check_classes(self, classes: Sequence[str]) -> None:
        """``VocabularyMismatch`` naming the first class that differs from the store's vocabulary."""
        mine, theirs = self.classes, [str(c) for c in classes]
        if mine == theirs:
            return
        if len(mine) != len(theirs):
            raise VocabularyMismatch(f"the store has {len(mine)} classes, the dataset {len(theirs)}")
        i = next(k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        raise VocabularyMismatch(f"class {i} differs: the store has {mine[i]!r}, the dataset {theirs[i]!r}")

    def check_dataset(self, fingerprint: str) -> None:
        stored = self.meta["dataset_fingerprint"]
        if stored != fingerprint:
            raise DatasetMismatch(
                f"the store was built from dataset {self.meta['dataset']!r} with fingerprint {stored}, not {fingerprint}"
            )

    # --- teachers -------------------------------------------------------------------------------------------
    @property
    def teachers(self) -> list[str]:
        return sorted(self._root["teachers"].group_keys())

    def _teacher_group(self, name: str):
        if name not in self._groups:
            teachers = self._root["teachers"]
            if not isinstance(name, str) or name not in teachers:
                raise UnknownTeacher(str(name), self.teachers)
            self._groups[name] = teachers[name]
        return self._groups[name]

    def teacher_info(self, name: str) -> dict[str, Any]:
        """Everything recorded about a teacher: the writer's attrs, codec, frames, levels, metrics."""
        if name not in self._teacher_cache:
            attrs = dict(self._teacher_group(name).attrs)
            self._teacher_cache[name] = {**attrs.get("attrs", {}), **attrs["teacher"],
                                         "metrics": attrs.get("metrics", {})}
        return dict(self._teacher_cache[name])

    def add_teacher(self, name: str, *, codec: str = "q8", frames: int | None = None,
                    frames_per_second: float | None = None, attrs: dict[str, Any] | None = None) -> None:
        """Register a teacher (a new subgroup; other teachers are not touched).

        Re-adding a teacher with identical settings is a no-op (a resumed job); different settings (another
        checkpoint sha256, frontend, codec, frame count, ...) raise ``TeacherConflict`` naming the keys.
        """
        self._require_writable()
        schema.check_teacher_name(name)
        codec_obj = get_codec(codec)
        attrs = json.loads(json.dumps(attrs or {}))  # JSON-clean, and a copy
        num_classes = len(self.classes)
        if attrs.get("num_classes", num_classes) != num_classes:
            raise VocabularyMismatch(
                f"teacher {name!r} predicts {attrs['num_classes']} classes, the store has {num_classes}")
        if (frames is None) != (frames_per_second is None) or (frames is not None and frames < 1):
            raise StoreError(f"teacher {name!r}: give both frames >= 1 and frames_per_second, or neither")
        fixed = {
            "name": name, "codec": codec_obj.name, "codec_config": codec_obj.config(), "num_classes": num_classes,
            "frames": None if frames is None else int(frames),
            "frames_per_second": None if frames_per_second is None else float(frames_per_second),
            "levels": ["clip"] if frames is None else ["clip", "frame"],
            "row_block": _largest_divisor_at_most(self.chunk_size, MAX_ROW_BLOCK),
            "created_at": _now(), "kd_version": _kd_version(),
        }
        teachers = self._root["teachers"]
        if name in teachers:
            self._check_same_teacher(name, fixed, attrs)
            return
        group = teachers.create_group(name)
        self._create_level_arrays(group, codec_obj, fixed)
        group.create_array("done", shape=(self.num_chunks,), dtype=str, chunks=(1,),
                           chunk_key_encoding={"name": "default", "separator": "/"})
        group.attrs.update({"teacher": fixed, "attrs": attrs, "metrics": {}})
        self._teacher_cache.pop(name, None)

    def _create_level_arrays(self, group, codec: Codec, fixed: dict[str, Any]) -> None:
        n, c, chunk = self.num_clips, len(self.classes), self.chunk_size
        _create(group, "clip", (n, c), codec.dtype, (chunk, c))
        if codec.uses_ranges:
            b = fixed["row_block"]
            _create(group, "clip_range", (2, -(-n // b), c), np.float16, (2, chunk // b, c))
        if fixed["frames"]:
            t = fixed["frames"]
            rows = _largest_divisor_at_most(chunk, max(1, FRAME_CHUNK_BYTES // (t * c * codec.dtype.itemsize)))
            _create(group, "frame", (n, t, c), codec.dtype, (rows, t, c))
            if codec.uses_ranges:
                g = -(-t // FRAME_BLOCK)
                _create(group, "frame_range", (2, n, g, c), np.float16, (2, rows, g, c))

    def _check_same_teacher(self, name: str, fixed: dict[str, Any], attrs: dict[str, Any]) -> None:
        info = dict(self._teacher_group(name).attrs)
        old = {**info.get("attrs", {}), **info["teacher"]}
        new = {**attrs, **fixed}
        differ = sorted(k for k in set(old) | set(new)
                        if k not in schema.VOLATILE_TEACHER_KEYS and old.get(k) != new.get(k))
        if differ:
            detail = "; ".join(f"{k}: stored {old.get(k)!r}, given {new.get(k)!r}" for k in differ[:3])
            raise TeacherConflict(f"teacher {name!r} is already in the store with other settings ({detail}); "
                                  "add it under another name or write a new store")

    def _set_group_attrs(self, group, key: str, values: dict[str, Any]) -> None:
        self._require_writable()
        merged = {**dict(group.attrs).get(key, {}), **json.loads(json.dumps(values))}
        group.attrs.update({key: merged})

    def set_teacher_metrics(self, name: str, metrics: dict[str, Any]) -> None:
        """Record quality metrics of a teacher (one process, at the end of a job)."""
        self._set_group_attrs(self._teacher_group(name), "metrics", metrics)
        self._teacher_cache.pop(name, None)

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        """Record store-level attributes (e.g. ensemble metrics), merged into ``user_attrs``."""
        self._set_group_attrs(self._root, "user", attrs)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return dict(dict(self._root.attrs).get("user", {}))

    def _require_writable(self) -> None:
        if self.mode != "r+":
            raise StoreError(f"{self.url} is open read-only; open it with mode='r+' to write")

    # --- writing --------------------------------------------------------------------------------------------
    def write_chunk(self, teacher: str, chunk_index: int, clip_logits: np.ndarray,
                    frame_logits: np.ndarray | None = None, *, valid: np.ndarray | None = None,
                    failures: dict[str, str] | None = None) -> None:
        """Write the logits of all clips of chunk ``chunk_index`` of ``teacher``, then mark the chunk done.

        Rows with ``valid=False`` (clips that could not be decoded) are not stored: reading them raises
        ``UnwrittenRows``; ``failures`` maps such clip ids to the reason. The done record is written last,
        so a crash mid-write leaves the chunk not done, and chunks of different indices share no object.
        """
        self._require_writable()
        info = self.teacher_info(teacher)
        rows = self.chunk_rows(chunk_index)
        ids = self.clip_ids[rows]
        n, c = len(ids), len(self.classes)
        valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
        if valid.shape != (n,):
            raise InvalidLogits(f"valid has shape {valid.shape}, chunk {chunk_index} has {n} clips")
        failures = dict(failures or {})
        chunk_set = set(ids)
        strangers = [k for k in failures if k not in chunk_set]
        if strangers:
            raise InvalidLogits(f"failures name {len(strangers)} clip(s) outside chunk {chunk_index}: {preview(strangers)}")
        arrays = {"clip": _checked(clip_logits, (n, c), "clip_logits", ids, valid)}
        if info["frames"]:
            if frame_logits is None:
                raise InvalidLogits(f"teacher {teacher!r} is frame-wise: write_chunk needs frame_logits")
            arrays["frame"] = _checked(frame_logits, (n, info["frames"], c), "frame_logits", ids, valid)
        elif frame_logits is not None:
            raise InvalidLogits(f"teacher {teacher!r} was added without frames; it stores no frame logits")
        group = self._teacher_group(teacher)
        codec = get_codec(info["codec_config"])
        for level, x in arrays.items():
            x = _fill_invalid(x, valid)
            axis, block = (0, info["row_block"]) if level == "clip" else (1, FRAME_BLOCK)
            stored, ranges = codec.encode(x, axis, block)
            group[level][rows] = stored
            if ranges is not None:
                if level == "clip":
                    group["clip_range"][:, rows.start // block : -(-rows.stop // block)] = ranges
                else:
                    group["frame_range"][:, rows] = ranges
        invalid = np.nonzero(~valid)[0]
        for i in invalid:
            failures.setdefault(ids[i], "marked invalid by the writer")
        record = {"chunk": chunk_index, "rows": [rows.start, rows.stop], "invalid": invalid.tolist(),
                  "failures": failures, "levels": list(arrays), "written_at": _now()}
        group["done"][chunk_index] = json.dumps(record)
        self._records.setdefault(teacher, {})[chunk_index] = record

    # --- progress -------------------------------------------------------------------------------------------
    def _done_keys(self, teacher: str) -> set[int]:
        fs, root = self._fs
        prefix = f"{root}/teachers/{teacher}/done/c"
        try:
            paths = fs.find(prefix)
        except FileNotFoundError:
            return set()
        return {int(p.rsplit("/", 1)[-1]) for p in paths if p.rsplit("/", 1)[-1].isdigit()}

    def done_records(self, teacher: str) -> dict[int, dict[str, Any]]:
        """The parsed done record of every finished chunk (records are immutable, so cached once read)."""
        group = self._teacher_group(teacher)
        cache = self._records.setdefault(teacher, {})
        new = sorted(self._done_keys(teacher) - set(cache))
        if new:
            for k, text in zip(new, group["done"].get_coordinate_selection(np.array(new))):
                try:
                    cache[k] = json.loads(str(text))
                except json.JSONDecodeError:
                    continue  # a half-written record: the chunk is not done
        return dict(cache)

    def done_chunks(self, teacher: str) -> np.ndarray:
        mask = np.zeros(self.num_chunks, bool)
        mask[list(self.done_records(teacher))] = True
        return mask

    def fraction_done(self, teacher: str) -> float:
        return float(self.done_chunks(teacher).mean())

    def failures(self, teacher: str) -> dict[str, str]:
        """Clip id -> reason for every clip a writer could not produce logits for."""
        out: dict[str, str] = {}
        for _, record in sorted(self.done_records(teacher).items()):
            out.update(record["failures"])
        return out

    def _valid_rows(self, teacher: str) -> np.ndarray:
        ok = np.zeros(self.num_clips, bool)
        for record in self.done_records(teacher).values():
            start, stop = record["rows"]
            ok[start:stop] = True
            ok[np.asarray(record["invalid"], np.int64) + start] = False
        return ok

    def refresh(self) -> None:
        """Forget cached progress and decoded arrays (to see chunks other processes finished since)."""
        self._records.clear()
        self._groups.clear()
        self._readers.clear()
        self._teacher_cache.clear()
        self._valid_cache.clear()
        self._cache_used = 0

    # --- reading --------------------------------------------------------------------------------------------
    def _reader(self, teacher: str, level: str) -> _Reader:
        key = (teacher, level)
        if key not in self._readers:
            if level not in self.teacher_info(teacher)["levels"]:
                raise StoreError(f"teacher {teacher!r} stores no {level}-level logits")
            reader = _Reader(self, teacher, level, max(0, self.cache_bytes - self._cache_used))
            self._cache_used += reader.cost
            self._readers[key] = reader
        return self._readers[key]

    def _checked_rows(self, teacher: str, ids: Sequence[str], rows: np.ndarray) -> None:
        """``UnwrittenRows`` unless every row is readable (checked against cached done records)."""
        cache = self._valid_cache
        if teacher not in cache:
            cache[teacher] = self._readable_rows(teacher)
        valid = cache[teacher]
        if valid is None or valid[rows].all():
            return
        old, valid = valid, self._readable_rows(teacher)  # other processes may have finished chunks since
        cache[teacher] = valid
        if valid is None or not np.array_equal(old, valid):
            self._drop_decoded(teacher)  # decoded before those chunks were written
        if valid is None:
            return
        ok = valid[rows]
        if not ok.all():
            bad = [ids[i] for i in np.nonzero(~ok)[0]]
            raise UnwrittenRows(teacher, bad, self.failures(teacher))

    def _readable_rows(self, teacher: str) -> np.ndarray | None:
        """Mask of the readable rows of ``teacher``, or ``None`` once all are (done records never change)."""
        valid = self._valid_rows(teacher)
        return None if valid.all() else valid

    def _drop_decoded(self, teacher: str) -> None:
        for key in [key for key in self._readers if key[0] == teacher]:
            self._cache_used -= self._readers.pop(key).cost

    def read(self, ids: Sequence[str], teachers: Sequence[str] | None = None, weights: Sequence[float] | None = None,
             space: str = "logit", level: str = "clip", activation: str = "sigmoid") -> np.ndarray:
        """Logits ``[len(ids), C]`` (``level="clip"``) or ``[len(ids), T, C]`` (``"frame"``) as float32.

        With several ``teachers`` (default: all) the result is an ensemble view computed now: the weighted
        mean (``weights`` default equal, normalised to sum 1) of the logits (``space="logit"``) or of the
        probabilities (``space="prob"``), mapped back to logits. In probability space ``activation`` says
        which: ``"sigmoid"`` (multi-label; returns ``logit(sum_i w_i sigmoid(z_i))``) or ``"softmax"``
        (single-label; returns ``log(sum_i w_i softmax(z_i))``, logits whose softmax is the mixture).
        """
        schema.check_level(level)
        if space not in ("logit", "prob"):
            raise StoreError(f"space must be 'logit' or 'prob', got {space!r}")
        if activation not in ("sigmoid", "softmax"):
            raise StoreError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        names = list(self.teachers if teachers is None else teachers)
        if not names:
            raise StoreError("no teachers to read: the store holds none yet" if teachers is None else
                             "teachers=[] selects nothing")
        for name in names:
            self._teacher_group(name)  # UnknownTeacher, checked once per handle
        w = _normalised_weights(weights, len(names))
        if not isinstance(ids, (list, tuple, np.ndarray)):
            ids = list(ids)
        rows = self.rows_of(ids)
        parts = []
        for name in names:
            self._checked_rows(name, ids, rows)
            parts.append(self._reader(name, level).gather(rows))
        shapes = {p.shape for p in parts}
        if len(shapes) > 1:
            raise StoreError(f"teachers {', '.join(names)} have different {level} shapes {sorted(shapes)}")
        if len(parts) == 1:
            return parts[0]
        return _combine(parts, w, space, activation)

    # --- integrity ------------------------------------------------------------------------------------------
    def bytes_on_disk(self, teacher: str | None = None) -> int:
        fs, root = self._fs
        path = root if teacher is None else f"{root}/teachers/{teacher}"
        try:
            return int(fs.du(path, total=True))
        except FileNotFoundError:
            return 0

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: clips, classes, chunking, and per teacher shapes, codec, size and progress."""
        teachers = {}
        total_logits = total_bytes = 0
        for name in self.teachers:
            info = self.teacher_info(name)
            group = self._teacher_group(name)
            done = self.done_chunks(name)
            rows_done = sum(self.chunk_rows(i).stop - self.chunk_rows(i).start for i in np.nonzero(done)[0])
            per_row = sum(int(np.prod(group[level].shape[1:])) for level in info["levels"])
            data_bytes = sum(_array_bytes(self, name, level) for level in info["levels"])
            logits = rows_done * per_row
            total_logits, total_bytes = total_logits + logits, total_bytes + data_bytes
            teachers[name] = {
                "codec": info["codec"], "shapes": {level: list(group[level].shape) for level in info["levels"]},
                "frames_per_second": info["frames_per_second"], "fraction_done": float(done.mean()),
                "chunks_done": int(done.sum()), "failed_clips": len(self.failures(name)),
                "bytes_on_disk": self.bytes_on_disk(name),
                "bytes_per_logit": data_bytes / logits if logits else None,
                "checkpoint_sha256": info.get("checkpoint_sha256"), "metrics": info.get("metrics", {}),
            }
        meta = self.meta
        return {
            "url": self.url, "format_version": meta["format_version"], "dataset": meta["dataset"],
            "dataset_fingerprint": meta["dataset_fingerprint"], "clips": self.num_clips,
            "classes": len(self.classes), "chunk_size": self.chunk_size, "num_chunks": self.num_chunks,
            "teachers": teachers, "bytes_on_disk": self.bytes_on_disk(),
            "bytes_per_logit": total_bytes / total_logits if total_logits else None,
            "fraction_done": min((t["fraction_done"] for t in teachers.values()), default=0.0),
        }

    def verify(self) -> list[Problem]:
        """Check every chunk: missing or undecodable objects of done chunks, NaN/inf, shapes, class counts."""
        problems = _verify_root(self)
        for name in self.teachers:
            problems += _verify_teacher(self, name)
        return problems


# --- helpers ------------------------------------------------------------------------------------------------------
def _create(group, name: str, shape, dtype, chunks) -> None:
    group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, serializer="auto",
                       compressors=_compressors(), chunk_key_encoding={"name": "default", "separator": "/"})


def _check_unique(what: str, values: Sequence[str]) -> None:
    if len(set(values)) != len(values):
        seen, repeated = set(), []
        for v in values:
            if v in seen and v not in repeated:
                repeated.append(v)
            seen.add(v)
        raise StoreError(f"{what} must be unique; {len(repeated)} repeated: {preview(repeated)}")


def _checked(x, shape: tuple[int, ...], what: str, ids: Sequence[str], valid: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape != shape:
        raise InvalidLogits(f"{what} has shape {x.shape}, expected {shape}")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    bad = [ids[i] for i in np.nonzero(valid & ~finite)[0]]
    if bad:
        raise InvalidLogits(f"{what} holds NaN/inf for {len(bad)} clip(s): {preview(bad)}; nothing was written")
    return x


def _fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Invalid rows take a valid row's values so they do not widen the q8 ranges (they are never read)."""
    if valid.all() or not valid.any():
        return x if valid.any() else np.zeros_like(x)
    x = x.copy()
    x[~valid] = x[np.argmax(valid)]
    return x


def _normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise StoreError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    return w / w.sum()


def _combine(parts: list[np.ndarray], w: np.ndarray, space: str, activation: str) -> np.ndarray:
    z = np.stack(parts).astype(np.float64)
    wb = w.reshape((-1,) + (1,) * (z.ndim - 1))
    if space == "logit":
        return (wb * z).sum(0).astype(np.float32)
    from numpy import logaddexp

    log_w = np.log(np.maximum(wb, 1e-300))
    if activation == "sigmoid":
        log_p = _logsumexp(log_w - logaddexp(0, -z))  # log sigmoid(z) = -softplus(-z)
        log_q = _logsumexp(log_w - logaddexp(0, z))
        return (log_p - log_q).astype(np.float32)
    log_softmax = z - _logsumexp(z, axis=-1, keepdims=True)
    return _logsumexp(log_w + log_softmax).astype(np.float32)


def _logsumexp(x: np.ndarray, axis: int = 0, keepdims: bool = False) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def _array_bytes(store: LogitStore, teacher: str, level: str) -> int:
    fs, root = store._fs
    total = 0
    for name in (level, f"{level}_range"):
        try:
            total += int(fs.du(f"{root}/teachers/{teacher}/{name}", total=True))
        except FileNotFoundError:
            continue
    return total


def _verify_root(store: LogitStore) -> list[Problem]:
    problems = []
    meta = store.meta
    if len(meta["classes"]) != meta["num_classes"]:
        problems.append(Problem("classes", f"{len(meta['classes'])} class names for {meta['num_classes']} classes"))
    try:
        ids = store.clip_ids
    except Exception as e:  # noqa: BLE001 -- an undecodable id array is a finding, not a crash
        return problems + [Problem("clip-ids", f"clip ids cannot be read: {e}")]
    if len(ids) != meta["num_clips"]:
        problems.append(Problem("clip-ids", f"{len(ids)} clip ids for {meta['num_clips']} clips"))
    if len(set(ids)) != len(ids):
        problems.append(Problem("clip-ids", f"{len(ids) - len(set(ids))} repeated clip ids"))
    return problems


def _verify_teacher(store: LogitStore, name: str) -> list[Problem]:
    info = store.teacher_info(name)
    group = store._teacher_group(name)
    n, c = store.num_clips, len(store.classes)
    problems = []
    if info["num_classes"] != c:
        problems.append(Problem("classes", f"{info['num_classes']} classes, the store has {c}", name))
    expected = {"clip": (n, c), "frame": (n, info["frames"], c)}
    for level in info["levels"]:
        if level not in group or tuple(group[level].shape) != expected[level]:
            got = tuple(group[level].shape) if level in group else None
            problems.append(Problem("shape", f"{level} logits have shape {got}, expected {expected[level]}", name))
    if problems:
        return problems
    records = store.done_records(name)
    unreadable = sorted(store._done_keys(name) - set(records))
    problems += [Problem("record", "done record cannot be parsed (the chunk will be rewritten)", name, k)
                 for k in unreadable]
    stored_keys = {level: _stored_chunk_keys(store, name, level) for level in info["levels"]}
    for k, record in sorted(records.items()):
        problems += _verify_chunk(store, name, k, record, stored_keys)
    missing = store.num_chunks - len(records)
    if missing:
        problems.append(Problem("incomplete", f"{missing} of {store.num_chunks} chunks are not done", name))
    return problems


def _level_arrays(group, level: str) -> list[str]:
    return [name for name in (level, f"{level}_range") if name in group]


def _stored_chunk_keys(store: LogitStore, teacher: str, level: str) -> dict[str, set[int]]:
    """For each array of ``level``: the row-axis indices of its stored chunk objects."""
    fs, root = store._fs
    out = {}
    for name in _level_arrays(store._teacher_group(teacher), level):
        prefix = f"{root}/teachers/{teacher}/{name}/c/"
        try:
            paths = fs.find(prefix)
        except FileNotFoundError:
            paths = []
        axis = 1 if name.endswith("_range") else 0  # range arrays lead with the (lo, hi) axis
        out[name] = {int(p[len(prefix):].split("/")[axis]) for p in paths}
    return out


def _needed_chunk_keys(array, name: str, rows: slice, row_block: int) -> set[int]:
    """Row-axis indices of the chunk objects of ``array`` that hold ``rows``."""
    per_entry = row_block if name == "clip_range" else 1
    axis_chunk = array.chunks[1] if name.endswith("_range") else array.chunks[0]
    first, last = rows.start // per_entry, (rows.stop - 1) // per_entry
    return set(range(first // axis_chunk, last // axis_chunk + 1))


def _verify_chunk(store: LogitStore, name: str, k: int, record: dict[str, Any],
                  stored_keys: dict[str, dict[str, set[int]]]) -> list[Problem]:
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
    group = store._teacher_group(name)
    for level, keys in stored_keys.items():
        reader = _Reader(store, name, level, 0)
        missing = {array: sorted(_needed_chunk_keys(group[array], array, rows, reader.row_block) - present)
                   for array, present in keys.items()}
        missing = {array: m for array, m in missing.items() if m}
        if missing:
            detail = "; ".join(f"{array} objects {m}" for array, m in missing.items())
            problems.append(Problem("missing-chunk", f"{detail} missing although the chunk is marked done", name, k))
            continue
        try:
            values = reader.decode_rows(rows.start, rows.stop)
        except Exception as e:  # noqa: BLE001 -- zstd/crc32c failures surface as various exception types
            problems.append(Problem("corrupt-chunk", f"{level} logits cannot be decoded: {type(e).__name__}: {e}",
                                    name, k))
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        bad = [ids[i] for i in np.nonzero(valid & ~finite)[0]]
        if bad:
            problems.append(Problem("non-finite", f"{level} logits hold NaN/inf for {len(bad)} clip(s): "
                                                  f"{preview(bad)}", name, k))
    return problems
