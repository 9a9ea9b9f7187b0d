"""``open_dataset("FORMAT:PATH", split=...)``: the one entry point from the command line to a dataset.

=====================  ==========================================  ============================================
format                 PATH                                        splits (default first)
=====================  ==========================================  ============================================
``audioset-hdf5``      an ``*_mp3.hdf`` file, or a folder of them  folder: train (balanced + unbalanced),
                                                                   balanced_train, unbalanced_train, eval;
                                                                   file: the split it holds
``audioset``           folder: segment CSVs + audio files          train, balanced_train, unbalanced_train, eval
``audioset-strong``    folder: strong TSVs + audio files           train, eval
``tau22``              the TAU22 development folder                train (fold1_train), eval/evaluate, all
``manifest``           a CSV/TSV of path + label(s)                all rows, or the rows of its split column
``folder``             any folder of audio files (no labels)       all files
=====================  ==========================================  ============================================

``evaluate``, ``evaluation`` and ``val`` are accepted for ``eval`` everywhere; ``Dataset.split`` holds the
canonical name. Options: ``classes`` (an explicit class list for the AudioSet formats and manifests),
``audio_dir`` (where the audio of ``audioset``/``audioset-strong`` lives, default the folder), ``task``
(manifests). Decoding resamples every clip from its own rate to the rate asked for, so files at an unexpected
sample rate are fine.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audioset import open_audioset_folder, open_audioset_hdf5
from .base import Dataset
from .errors import DatasetError
from .folder import open_folder
from .manifest import open_manifest
from .strong import open_audioset_strong
from .tau22 import open_tau22

__all__ = ["FORMATS", "open_dataset", "parse_spec"]

FORMATS: dict[str, Callable[..., Dataset]] = {
    "audioset-hdf5": open_audioset_hdf5,
    "audioset": open_audioset_folder,
    "audioset-strong": open_audioset_strong,
    "tau22": open_tau22,
    "manifest": open_manifest,
    "folder": open_folder,
}


def parse_spec(spec: str) -> tuple[str, Path]:
    """``"tau22:data/TAU"`` -> ``("tau22", Path("/abs/cwd/data/TAU"))``: ``~`` expanded, made absolute so the
    dataset's ``spec`` reopens it from any working directory (dask workers, DataLoader processes)."""
    fmt, sep, path = spec.partition(":")
    fmt = fmt.strip().lower()
    if not sep or not path.strip():
        raise DatasetError(f"dataset spec {spec!r} is not FORMAT:PATH (formats: {', '.join(FORMATS)})")
    if fmt not in FORMATS:
        raise DatasetError(f"dataset spec {spec!r}: unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    return fmt, Path(path.strip()).expanduser().absolute()


def open_dataset(spec: str, split: str | None = None, **options: Any) -> Dataset:
    """Opens ``FORMAT:PATH`` at ``split`` (None: the format's default, see the table above).

    Args:
        spec: ``audioset-hdf5:FILE_OR_DIR``, ``audioset:DIR``, ``audioset-strong:DIR``, ``tau22:DIR`` or
            ``manifest:FILE``.
        split: Which split; ``None`` gives the default (``train``; a manifest's every row; an HDF5 file's own).
        **options: ``classes``, ``audio_dir``, ``task`` where the format takes them.

    Raises:
        DatasetError: a bad spec, an option the format does not take, or a wrong layout (the message names the
            file and column).
    """
    fmt, path = parse_spec(spec)
    opener = FORMATS[fmt]
    accepted = set(inspect.signature(opener).parameters) - {"path", "split"}
    extra = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if extra:
        raise DatasetError(f"format {fmt} does not take option(s) {', '.join(extra)} "
                           f"(it takes: {', '.join(sorted(accepted)) or 'none'})")
    return opener(path, split, **{k: v for k, v in options.items() if v is not None})
