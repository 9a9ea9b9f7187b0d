"""``LogitStore``: teacher logits for a fixed list of clips in a Zarr v3 group at any URL (local, memory://, s3://, ...).

Teachers run once and write chunk-aligned regions (one chunk = ``chunk_size`` consecutive clips) from any
number of processes without a lock; each chunk ends with a small done record, so an interrupted job resumes
where it stopped. Students read shuffled batches by clip id through a per-process cache of decoded arrays.
Ensembles of teachers are views computed at read time.

This module is the facade; each job lives in its own module:

- :mod:`logit_store.schema`: the on-disk layout, format version and the checks run on open;
- :mod:`logit_store.storage`: opening URLs as Zarr stores, listing keys and sizes through Zarr's Store API;
- :mod:`logit_store.codecs`: the value codecs (``f32``, ``f16``, the 8-bit ``q8`` and, for frames, ``qb``);
- :mod:`logit_store.writer`: a new teacher's arrays, and the checks and encoding of one chunk;
- :mod:`logit_store.views`: the store's view configuration and each clip's view parameters;
- :mod:`logit_store.progress`: done records, read once per handle and kept current from its writes;
- :mod:`logit_store.index`: the vectorised clip id -> row index;
- :mod:`logit_store.reader`: decoded rows (whole arrays or an LRU of chunks) within a byte budget;
- :mod:`logit_store.ensemble`: weighted means of teachers in logit or probability space;
- :mod:`logit_store.verify`: the integrity check behind :meth:`LogitStore.verify`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from logit_store import ensemble, progress, schema, storage, writer
from logit_store import views as views_module
from logit_store.codecs import F32Codec
from logit_store.errors import (
    DatasetMismatch,
    IncompatibleStore,
    InvalidLogits,
    StoreError,
    StoreNotFound,
    TeacherConflict,
    UnknownTeacher,
    UnwrittenRows,
    UnwrittenViews,
    ViewMismatch,
    VocabularyMismatch,
    preview,
)
from logit_store.index import IdIndex
from logit_store.reader import DecodedCache, Reader
from logit_store.registry import default_frame_codec, get_codec
from logit_store.verify import Problem, verify

__all__ = ["DEFAULT_CACHE_BYTES", "LogitStore", "Problem"]

DEFAULT_CACHE_BYTES = 2 * 1024**3
VIEWS_CACHE_KEY = ":views"  # the decoded-cache entry of the view parameters (no teacher name starts with ':')


class LogitStore:
    """Teacher logits (clip ``[N, C]`` and frame ``[N, T, C]``) for a fixed list of clip ids.

    A store with views (:meth:`set_views`) holds the logits of ``V`` views of every clip (clip ``[N, V, C]``,
    frame ``[N, V, T, C]`` when ``V > 1``) and each view's parameters (:meth:`view_params`).

    A handle is cheap to pickle: it carries only the URL and options, and every process (DataLoader worker,
    dask worker) opens the Zarr group lazily on first use, after fork or unpickling.

    Progress (which chunks are done) is read from storage once per handle and teacher, the first time it is
    needed, and kept current from this handle's own ``write_chunk`` calls; :meth:`reload_progress` reads the
    chunks other processes finished since. Reads do so by themselves before reporting rows as unwritten.
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
        self._meta: dict[str, Any] | None = None
        self._clip_ids: list[str] | None = None
        self._id_index: IdIndex | None = None
        self._teacher_cache: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, Any] = {}
        self._progress: dict[str, progress.DoneRecords] = {}
        self._decoded = DecodedCache(self.cache_bytes)
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

        try:
            root = storage.open_group(self.url, "r" if self.mode == "r" else "r+", self.storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreNotFound(f"no logit store at {self.url}") from e
        except (zarr.errors.ContainsArrayError, ValueError, KeyError) as e:
            raise IncompatibleStore(f"{self.url} is not a readable logit store: {e}") from e
        self._meta = schema.check_root_attrs(dict(root.attrs), self.url)
        return root

    # --- creation and opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str, clip_ids: Sequence[str], classes: Sequence[str], *, mids: Sequence[str] | None = None,
               dataset: str, dataset_fingerprint: str, chunk_size: int = 1024, overwrite: bool = False,
               storage_options: dict[str, Any] | None = None, views: dict[str, Any] | None = None,
               view_param_names: Sequence[str] | None = None) -> LogitStore:
        """Create an empty store for ``clip_ids`` (unique) and the class vocabulary ``classes``.

        ``views`` (with ``view_param_names``) records the views of the clips, as :meth:`set_views` does.
        """
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
        if views is not None:
            views, view_param_names = views_module.check_config(views, view_param_names)
        elif view_param_names is not None:
            raise StoreError("view_param_names names the parameters of views: give views too")
        store = storage.open_zarr_store(url, False, storage_options)
        if not overwrite:
            try:
                zarr.open_group(store, mode="r")
                raise StoreError(f"{url} already holds a Zarr group; pass overwrite=True to replace it")
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):
                pass
        try:
            root = zarr.open_group(store, mode="w")
        except (FileNotFoundError, PermissionError) as e:  # e.g. s3fs: no such bucket, access denied
            raise StoreError(f"cannot create a logit store at {url}: {e}") from e
        ids = root.create_array("clip_ids", shape=(len(clip_ids),), dtype=str, chunks=(min(len(clip_ids), 65536),))
        ids[:] = np.array(clip_ids, dtype=object)
        root.create_group("teachers")
        meta = {
            "format": schema.FORMAT, "format_version": schema.format_version(1), "dataset": dataset,
            "dataset_fingerprint": dataset_fingerprint, "num_clips": len(clip_ids), "num_classes": len(classes),
            "classes": classes, "mids": None if mids is None else [str(m) for m in mids],
            "chunk_size": int(chunk_size), "created_at": schema.now(), "kd_version": schema.kd_version(),
        }
        if views is not None:
            meta = _with_views(root, meta, views, view_param_names)
        root.attrs.update({schema.ROOT_KEY: meta, "user": {}})
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
            self._id_index = IdIndex(self.clip_ids)
        return self._id_index.rows(ids)

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

    # --- views ----------------------------------------------------------------------------------------------
    @property
    def views(self) -> dict[str, Any] | None:
        """The configuration the views of the clips were drawn from (``None``: the store has no views)."""
        config = self.meta.get("views")
        return None if config is None else json.loads(json.dumps(config))

    @property
    def num_views(self) -> int:
        """Views per clip: ``V`` of the view configuration, 1 for a store without views."""
        config = self.meta.get("views")
        return 1 if config is None else int(config["count"])

    @property
    def view_param_names(self) -> list[str] | None:
        """Names of the ``P`` numbers stored per view (the last axis of :meth:`view_params`)."""
        names = self.meta.get("view_param_names")
        return None if names is None else list(names)

    def set_views(self, config: dict[str, Any], view_param_names: Sequence[str]) -> None:
        """Record the views of the store's clips: ``config`` (a JSON dict whose ``count`` is the views per clip,
        the rest the caller's: kinds, ranges, seed, impulse responses and their fingerprint) and the names of
        the parameters stored per view.

        Views belong to the clips, so all teachers share them. The same configuration again is a no-op (a
        resumed job); another one, or views for a store that holds teachers written without them, raises
        ``ViewMismatch``. Call it before any writer starts (as :meth:`create` with ``views`` does).
        """
        self._require_writable()
        config, names = views_module.check_config(config, view_param_names)
        if self.meta.get("views") is not None:
            self.check_views(config, names)
            return
        if self.teachers:
            raise ViewMismatch(f"{self.url} holds teachers written without views ({', '.join(self.teachers)}); "
                               "write a new store for teachers run on views")
        meta = _with_views(self._root, dict(self.meta), config, names)
        self._root.attrs.update({schema.ROOT_KEY: meta})
        self._meta = meta

    def check_views(self, config: dict[str, Any] | None, view_param_names: Sequence[str] | None = None) -> None:
        """``ViewMismatch`` unless the store's views are ``config`` (``None``: the store has no views)."""
        if config is not None:
            config, view_param_names = views_module.check_config(config, view_param_names)
        views_module.check_same(self.meta.get("views"), self.meta.get("view_param_names"), config,
                                view_param_names, self.url)

    def view_params(self, ids: Sequence[str], views: np.ndarray | int | None = None) -> np.ndarray:
        """The parameters of the views of ``ids``: ``[len(ids), V, P]`` float32, or with ``views`` (one view
        index per id, or one for all) ``[len(ids), P]``.

        ``UnwrittenViews`` for clips whose chunk no teacher has written yet (after reading what other
        processes wrote since); ``StoreError`` for a store without views.
        """
        if self.meta.get("views") is None:
            raise StoreError(f"{self.url} has no views: its teachers were run on the clips as they are")
        if not isinstance(ids, (list, tuple, np.ndarray)):
            ids = list(ids)
        rows = self.rows_of(ids)
        picks = self._view_picks(views, len(rows), keep_axis=True)
        for _ in range(2):
            reader = self._decoded.reader(VIEWS_CACHE_KEY, views_module.ARRAY, self._view_params_reader)
            got = reader.gather(rows, picks)
            missing = np.isnan(got.reshape(len(rows), -1)).any(axis=1)
            if not missing.any():
                return got
            self._decoded.drop(VIEWS_CACHE_KEY)  # decoded before other processes wrote these chunks?
        raise UnwrittenViews([ids[i] for i in np.nonzero(missing)[0]])

    def _view_params_reader(self, _budget: int) -> Reader:
        """The decoded view parameters, kept whole whatever the cache budget (P / C of one teacher's clip logits)."""
        array = self._root[views_module.ARRAY]
        return Reader(array, None, F32Codec(), "clip", 1, int(np.prod(array.shape)) * 4, self.num_views)

    def _view_picks(self, views: np.ndarray | int | None, n: int, keep_axis: bool = False) -> np.ndarray | None:
        """``views`` as int64 view indices of ``n`` rows, checked against ``V`` (``StoreError``); ``None`` when
        every row is to keep its view axis, or (single-view layouts, unless ``keep_axis``) has none to pick from.
        """
        if views is None:
            return None
        v = np.asarray(views)
        if v.ndim == 0:
            v = np.full(n, v)
        if v.shape != (n,) or v.dtype.kind not in "iu":
            raise StoreError(f"views must be one integer view index per id ({n}), got {v.dtype} of shape {v.shape}")
        count = self.num_views
        if n and (int(v.min()) < 0 or int(v.max()) >= count):
            raise StoreError(f"view indices must lie in [0, {count}): the store has {count} view(s) per clip, "
                             f"got {int(v.min())}..{int(v.max())}")
        if count == 1 and not keep_axis:
            return None
        return v.astype(np.int64, copy=False)

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
                    frames_per_second: float | None = None, attrs: dict[str, Any] | None = None,
                    frame_codec: str | dict[str, Any] | None = None) -> None:
        """Register a teacher (a new subgroup; other teachers are not touched).

        ``codec`` stores the clip logits; ``frame_codec`` (a name or a codec config) the frame logits of a
        frame-wise teacher, by default ``qb`` when ``codec`` is ``q8`` and ``codec`` otherwise. Re-adding a
        teacher with identical settings is a no-op (a resumed job; without ``frame_codec`` the stored one is
        kept, also a teacher's whose frames use its ``codec``); different settings (another checkpoint sha256,
        frontend, codec, frame count, ...) raise ``TeacherConflict`` naming the keys.
        """
        self._require_writable()
        schema.check_teacher_name(name)
        codec_obj = get_codec(codec).for_classes(len(self.classes))
        if not codec_obj.clip_level:
            raise StoreError(f"codec {codec_obj.name!r} stores frame logits only; pass it as frame_codec")
        frame_codec_obj = get_codec(default_frame_codec(codec) if frame_codec is None else frame_codec)
        attrs = json.loads(json.dumps(attrs or {}))  # JSON-clean, and a copy
        num_classes = len(self.classes)
        if attrs.get("num_classes", num_classes) != num_classes:
            raise VocabularyMismatch(
                f"teacher {name!r} predicts {attrs['num_classes']} classes, the store has {num_classes}")
        if (frames is None) != (frames_per_second is None) or (frames is not None and frames < 1):
            raise StoreError(f"teacher {name!r}: give both frames >= 1 and frames_per_second, or neither")
        if frame_codec is not None and frames is None:
            raise StoreError(f"teacher {name!r}: frame_codec is for frame-wise teachers; give frames too")
        fixed = {
            "name": name, "codec": codec_obj.name, "codec_config": codec_obj.config(), "num_classes": num_classes,
            "frames": None if frames is None else int(frames),
            "frames_per_second": None if frames_per_second is None else float(frames_per_second),
            "levels": ["clip"] if frames is None else ["clip", "frame"],
            "row_block": writer.row_block(self.chunk_size),
            "created_at": schema.now(), "kd_version": schema.kd_version(),
        }
        if self.num_views > 1:  # recorded only with a view axis: single-view teachers keep their exact settings
            fixed["views"] = self.num_views
        if frames is not None:
            fixed.update(frame_codec=frame_codec_obj.name, frame_codec_config=frame_codec_obj.config())
        teachers = self._root["teachers"]
        if name in teachers:
            if frame_codec is None:  # a resumed job keeps the frame codec the teacher was added with
                stored = dict(self._teacher_group(name).attrs)["teacher"]
                for key in ("frame_codec", "frame_codec_config"):
                    fixed.pop(key, None)
                    if key in stored:
                        fixed[key] = stored[key]
            self._check_same_teacher(name, fixed, attrs)
            return
        group = teachers.create_group(name)
        writer.create_level_arrays(group, {"clip": codec_obj, "frame": frame_codec_obj}, self.num_clips,
                                   num_classes, self.chunk_size, fixed["row_block"], fixed["frames"],
                                   fixed.get("views", 1))
        progress.create_done_array(group, self.num_chunks)
        group.attrs.update({"teacher": fixed, "attrs": attrs, "metrics": {}})
        self._teacher_cache.pop(name, None)

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
                    failures: dict[str, str] | None = None, view_params: np.ndarray | None = None) -> None:
        """Write the logits of all clips of chunk ``chunk_index`` of ``teacher``, then mark the chunk done.

        ``clip_logits`` is ``[n, C]`` and ``frame_logits`` ``[n, T, C]`` for the ``n`` clips of the chunk; in a
        store with ``V > 1`` views ``[n, V, C]`` and ``[n, V, T, C]``. Rows with ``valid=False`` (clips that
        could not be decoded; a clip is valid or not with all its views) are not stored: reading them raises
        ``UnwrittenRows``; ``failures`` maps such clip ids to the reason. In a store with views,
        ``view_params`` (``[n, V, P]``) are the parameters of the views the logits were computed on: needed by
        the first teacher to write the chunk, checked against the stored ones by the others (``ViewMismatch``
        when they differ; nothing is written then). The done record is written last, so a crash mid-write
        leaves the chunk not done, and chunks of different indices share no object.
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
        lead = (n,) if info.get("views", 1) == 1 else (n, info["views"])
        arrays = {"clip": writer.check_logits(clip_logits, (*lead, c), "clip_logits", ids, valid)}
        if info["frames"]:
            if frame_logits is None:
                raise InvalidLogits(f"teacher {teacher!r} is frame-wise: write_chunk needs frame_logits")
            arrays["frame"] = writer.check_logits(frame_logits, (*lead, info["frames"], c), "frame_logits", ids,
                                                  valid)
        elif frame_logits is not None:
            raise InvalidLogits(f"teacher {teacher!r} was added without frames; it stores no frame logits")
        if self.meta.get("views") is not None:
            params = None if view_params is None else views_module.check_params(
                view_params, (n, self.num_views, len(self.meta["view_param_names"])))
            if views_module.write_params(self._root[views_module.ARRAY], rows, params, chunk_index, ids):
                self._decoded.drop(VIEWS_CACHE_KEY)
        elif view_params is not None:
            raise InvalidLogits(f"{self.url} has no views; write_chunk takes no view_params")
        group = self._teacher_group(teacher)
        codecs = {level: get_codec(schema.codec_config(info, level)) for level in arrays}
        writer.write_levels(group, codecs, info, rows, arrays, valid)
        invalid = np.nonzero(~valid)[0]
        for i in invalid:
            failures.setdefault(ids[i], "marked invalid by the writer")
        record = progress.make_record(chunk_index, rows, invalid, failures, list(arrays))
        group["done"][chunk_index] = json.dumps(record)  # last: the chunk is done once this object exists
        self._done(teacher).add(chunk_index, record)
        self._rows_changed(teacher)

    # --- progress -------------------------------------------------------------------------------------------
    def _done(self, teacher: str) -> progress.DoneRecords:
        if teacher not in self._progress:
            self._progress[teacher] = progress.DoneRecords(self._teacher_group(teacher)["done"], self.num_chunks)
        return self._progress[teacher]

    def done_records(self, teacher: str) -> dict[int, dict[str, Any]]:
        """The parsed done record of every finished chunk, as this handle knows them (see :meth:`reload_progress`)."""
        return dict(self._done(teacher).current())

    def done_chunks(self, teacher: str) -> np.ndarray:
        """Mask of the finished chunks of ``teacher``: read once per handle, then kept current by its writes."""
        mask = np.zeros(self.num_chunks, bool)
        mask[list(self._done(teacher).current())] = True
        return mask

    def failures(self, teacher: str) -> dict[str, str]:
        """Clip id -> reason for every clip a writer could not produce logits for."""
        return progress.failures_of(self._done(teacher).current())

    def reload_progress(self, teacher: str | None = None) -> None:
        """Read the done records of chunks other processes finished since this handle read them.

        For ``teacher``, or every teacher whose progress this handle has read (the others are read on first
        use anyway). Decoded rows of a teacher with newly finished chunks are dropped, to be decoded again.
        """
        names = list(self._progress) if teacher is None else [teacher]
        for name in names:
            if self._done(name).reload():
                self._rows_changed(name)

    def _rows_changed(self, teacher: str) -> None:
        """Forget what was derived from ``teacher``'s rows before they changed: validity and decoded arrays."""
        self._valid_cache.pop(teacher, None)
        self._decoded.drop(teacher)

    # --- reading --------------------------------------------------------------------------------------------
    def _reader(self, teacher: str, level: str) -> Reader:
        reader = self._decoded.get(teacher, level)
        if reader is not None:
            return reader
        info = self.teacher_info(teacher)
        if level not in info["levels"]:
            raise StoreError(f"teacher {teacher!r} stores no {level}-level logits")
        group = self._teacher_group(teacher)
        return self._decoded.reader(teacher, level, lambda budget: Reader.of_teacher(group, info, level, budget))

    def _logit_shape(self, teacher: str, level: str) -> tuple[int, ...]:
        """The shape of ``level``'s decoded logits (a ``topk`` clip array stores fewer values per row)."""
        stored = self._teacher_group(teacher)[level].shape
        codec = get_codec(schema.codec_config(self.teacher_info(teacher), level))
        return (*stored[:-1], codec.decoded_width(stored[-1]))

    def _readable_rows(self, teacher: str) -> np.ndarray | None:
        """Mask of the readable rows of ``teacher``, or ``None`` once all are (done records never change)."""
        if teacher not in self._valid_cache:
            valid = progress.valid_rows(self._done(teacher).current(), self.num_clips)
            self._valid_cache[teacher] = None if valid.all() else valid
        return self._valid_cache[teacher]

    def _checked_rows(self, teacher: str, ids: Sequence[str], rows: np.ndarray) -> None:
        """``UnwrittenRows`` unless every row is readable (checked against cached done records)."""
        valid = self._readable_rows(teacher)
        if valid is None or valid[rows].all():
            return
        self.reload_progress(teacher)  # other processes may have finished chunks since
        valid = self._readable_rows(teacher)
        if valid is None:
            return
        ok = valid[rows]
        if not ok.all():
            bad = [ids[i] for i in np.nonzero(~ok)[0]]
            raise UnwrittenRows(teacher, bad, self.failures(teacher))

    def read(self, ids: Sequence[str], teachers: Sequence[str] | None = None, weights: Sequence[float] | None = None,
             space: str = "logit", level: str = "clip", activation: str = "sigmoid",
             views: np.ndarray | int | None = None) -> np.ndarray:
        """Logits ``[len(ids), C]`` (``level="clip"``) or ``[len(ids), T, C]`` (``"frame"``) as float32.

        In a store with ``V > 1`` views, every view: ``[len(ids), V, C]`` (``[len(ids), V, T, C]``); with
        ``views`` (an integer array, one view index per id, or one index for all ids) the chosen view of each
        id: ``[len(ids), C]`` (``[len(ids), T, C]``). A single-view store takes ``views`` of 0.

        With several ``teachers`` (default: all) the result is an ensemble view computed now: the weighted
        mean (``weights`` default equal, normalised to sum 1) of the logits (``space="logit"``) or of the
        probabilities (``space="prob"``), mapped back to logits. In probability space ``activation`` says
        which: ``"sigmoid"`` (multi-label; returns ``logit(sum_i w_i sigmoid(z_i))``) or ``"softmax"``
        (single-label; returns ``log(sum_i w_i softmax(z_i))``, logits whose softmax is the mixture).
        Ensembles combine the teachers view by view.
        """
        schema.check_level(level)
        ensemble.check_view(space, activation)
        names = list(self.teachers if teachers is None else teachers)
        if not names:
            raise StoreError("no teachers to read: the store holds none yet" if teachers is None else
                             "teachers=[] selects nothing")
        for name in names:
            self._teacher_group(name)  # UnknownTeacher, checked once per handle
        w = ensemble.normalised_weights(weights, len(names))
        if not isinstance(ids, (list, tuple, np.ndarray)):
            ids = list(ids)
        rows = self.rows_of(ids)
        picks = self._view_picks(views, len(rows))
        parts = []
        for name in names:
            self._checked_rows(name, ids, rows)
            parts.append(self._reader(name, level).gather(rows, picks))
        shapes = {p.shape for p in parts}
        if len(shapes) > 1:
            raise StoreError(f"teachers {', '.join(names)} have different {level} shapes {sorted(shapes)}")
        if len(parts) == 1:
            return parts[0]
        return ensemble.combine(parts, w, space, activation)

    # --- size, summary and integrity ------------------------------------------------------------------------
    def bytes_on_disk(self, teacher: str | None = None) -> int:
        """Bytes stored for the whole store, or for one teacher (``UnknownTeacher`` if it has none)."""
        return storage.size_of(self._root if teacher is None else self._teacher_group(teacher))

    def _level_bytes(self, teacher: str, level: str) -> int:
        group = self._teacher_group(teacher)
        return sum(storage.size_of(group[name]) for name in (level, f"{level}_range") if name in group)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: clips, classes, chunking, views, and per teacher shapes, codec, size and progress.

        ``bytes_per_logit`` counts every view's logits: bytes / (rows done x V x logits per view and row).
        """
        teachers = {}
        total_logits = total_bytes = 0
        for name in self.teachers:
            info = self.teacher_info(name)
            done = self.done_chunks(name)
            rows_done = sum(self.chunk_rows(i).stop - self.chunk_rows(i).start for i in np.nonzero(done)[0])
            shapes = {level: self._logit_shape(name, level) for level in info["levels"]}
            per_row = sum(int(np.prod(shape[1:])) for shape in shapes.values())
            data_bytes = sum(self._level_bytes(name, level) for level in info["levels"])
            logits = rows_done * per_row
            total_logits, total_bytes = total_logits + logits, total_bytes + data_bytes
            teachers[name] = {
                "codec": info["codec"],
                "frame_codec": schema.codec_config(info, "frame")["name"] if info["frames"] else None,
                "shapes": {level: list(shape) for level, shape in shapes.items()},
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
            "num_views": self.num_views, "views": views_module.summary(meta.get("views"), meta.get("view_param_names")),
            "teachers": teachers, "bytes_on_disk": self.bytes_on_disk(),
            "bytes_per_logit": total_bytes / total_logits if total_logits else None,
            "fraction_done": min((t["fraction_done"] for t in teachers.values()), default=0.0),
        }

    def verify(self) -> list[Problem]:
        """Check every chunk: missing or undecodable objects of done chunks, NaN/inf, shapes, class counts.

        Reads storage afresh (see :mod:`logit_store.verify`): chunks finished by any process are checked.
        """
        return verify(self)


def _with_views(root, meta: dict[str, Any], config: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``meta`` recording the checked view ``config``, once the ``view_params`` array is created in ``root``."""
    count = int(config["count"])
    views_module.create_array(root, int(meta["num_clips"]), count, len(names), int(meta["chunk_size"]))
    return {**meta, "views": config, "view_param_names": names, "format_version": schema.format_version(count)}


def _check_unique(what: str, values: Sequence[str]) -> None:
    if len(set(values)) != len(values):
        seen, repeated = set(), []
        for v in values:
            if v in seen and v not in repeated:
                repeated.append(v)
            seen.add(v)
        raise StoreError(f"{what} must be unique; {len(repeated)} repeated: {preview(repeated)}")
