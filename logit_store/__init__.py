"""Offline soft-target store for knowledge distillation: teacher logits in a Zarr v3 group at any URL.

Teachers run once and write their clip (and frame) logits chunk by chunk, from many processes, resumably;
students read shuffled batches by clip id, from any ensemble of the stored teachers. A store may hold the
logits of several views (augmented versions) of every clip, with each view's parameters. numpy, zarr and
numcodecs only (no torch; remote URLs go through Zarr's ``FsspecStore``), so DataLoader workers and dask
workers can import it cheaply.
"""
from logit_store.codecs import Codec
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
    UnwrittenViews,
    ViewMismatch,
    VocabularyMismatch,
)
from logit_store.registry import CODECS, get_codec
from logit_store.schema import FORMAT_VERSION
from logit_store.store import DEFAULT_CACHE_BYTES, LogitStore, Problem

__all__ = [
    "CODECS",
    "DEFAULT_CACHE_BYTES",
    "FORMAT_VERSION",
    "Codec",
    "DatasetMismatch",
    "IncompatibleStore",
    "InvalidLogits",
    "LogitStore",
    "MissingIds",
    "Problem",
    "StoreError",
    "StoreNotFound",
    "TeacherConflict",
    "UnknownTeacher",
    "UnwrittenRows",
    "UnwrittenViews",
    "ViewMismatch",
    "VocabularyMismatch",
    "get_codec",
]
