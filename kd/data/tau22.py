"""TAU Urban Acoustic Scenes 2022 Mobile (Heittola, Mesaros & Virtanen; DCASE 2022/2023 Task 1).

Layout of ``tau22:DIR`` (the ``TAU-urban-acoustic-scenes-2022-mobile-development`` folder):
``meta.csv`` (tab-separated: ``filename`` e.g. ``audio/airport-barcelona-0-0-0-a.wav``, ``scene_label``,
``identifier`` = ``<city>-<location>``, ``source_label`` = device ``a``, ``b``, ``c``, ``s1`` ... ``s6``),
``evaluation_setup/fold1_train.csv`` and ``fold1_evaluate.csv`` (tab-separated ``filename``, ``scene_label``), and
the 1-second 44.1 kHz wav files under ``audio/``.

Splits: ``train`` (fold1_train, the default), ``eval`` (alias ``evaluate``: fold1_evaluate), ``all`` (meta.csv),
and DCASE'24's data-efficient training subsets ``split5``, ``split10``, ``split25``, ``split50`` and ``split100``
(5 ... 100 % of fold1_train, each a subset of the next): the official ``split<N>.csv`` files (tab-separated, a
``filename`` column naming rows of ``meta.csv``), read from ``split_setup/`` (where the DCASE'24 baseline keeps
them) or ``evaluation_setup/``.
Classes are the scene labels in sorted order (the order of the reference system's label encoder). Devices seen in
fold1_train are the "seen" devices; fold1_evaluate adds the unseen ``s4``-``s6``. Clip ids are the file stems
(``airport-barcelona-0-0-0-a``); the city is the part of ``identifier`` before the first ``-``.
"""
from __future__ import annotations

from pathlib import Path

from kd.tasks import ASC

from .base import Dataset, canonical_split, read_table
from .clip import Clip
from .errors import DatasetError

__all__ = ["open_tau22"]

META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
FOLD_FILES = {"train": "fold1_train.csv", "eval": "fold1_evaluate.csv"}
SUBSET_PERCENTS = (5, 10, 25, 50, 100)  # DCASE'24 Task 1's training subsets, in % of fold1_train
SUBSET_SPLITS = tuple(f"split{p}" for p in SUBSET_PERCENTS)
SPLIT_FOLDERS = ("split_setup", "evaluation_setup")  # where split<N>.csv may lie, in the order searched


def _fold_filenames(path: Path) -> list[str]:
    return [row["filename"] for row in read_table(path, delimiter="\t", required=("filename",))]


def subset_file(path: Path, split: str) -> Path:
    """The official file of the training subset ``split`` (``split25`` -> ``split25.csv``) in ``SPLIT_FOLDERS``."""
    for folder in SPLIT_FOLDERS:
        candidate = path / folder / f"{split}.csv"
        if candidate.is_file():
            return candidate
    raise DatasetError(f"tau22:{path}: split {split!r} needs the DCASE'24 split file {split}.csv in "
                       f"{' or '.join(str(path / f) for f in SPLIT_FOLDERS)}; none is there")


def open_tau22(path: Path, split: str | None = None) -> Dataset:
    """Opens a split of TAU22 (see the module docstring for layout and splits)."""
    spec = f"tau22:{path}"
    if not path.is_dir():
        raise DatasetError(f"{spec}: not a folder")
    split = canonical_split(split) or "train"
    if split not in (*FOLD_FILES, "all", *SUBSET_SPLITS):
        raise DatasetError(f"{spec}: unknown split {split!r}; use train, evaluate (eval), all or one of "
                           f"DCASE'24's training subsets {', '.join(SUBSET_SPLITS)}")
    meta = read_table(path / "meta.csv", delimiter="\t", required=META_COLUMNS)
    by_file = {row["filename"]: row for row in meta}
    classes = sorted({row["scene_label"] for row in meta})
    setup = path / "evaluation_setup"
    train_files = _fold_filenames(setup / FOLD_FILES["train"])
    _check_known(train_files, by_file, setup / FOLD_FILES["train"])
    if split == "all":
        wanted = [row["filename"] for row in meta]
    elif split in SUBSET_SPLITS:
        wanted = _fold_filenames(subset_file(path, split))
        _check_known(wanted, by_file, subset_file(path, split))
    else:
        wanted = train_files if split == "train" else _fold_filenames(setup / FOLD_FILES[split])
        _check_known(wanted, by_file, setup / FOLD_FILES[split])
    clips = [_clip(path, by_file[f], classes) for f in wanted]
    seen = {by_file[f]["source_label"] for f in train_files}
    return Dataset(clips=clips, classes=classes, task=ASC, name=path.name, split=split, spec=spec,
                   seen_devices=sorted(seen))


def _check_known(filenames: list[str], by_file: dict[str, dict[str, str]], listed_in: Path) -> None:
    unknown = [f for f in filenames if f not in by_file]
    if unknown:
        raise DatasetError(f"{listed_in}: {len(unknown)} filename(s) are not in meta.csv "
                           f"(e.g. {', '.join(unknown[:3])})")
    if len(set(filenames)) != len(filenames):
        raise DatasetError(f"{listed_in}: lists a filename more than once")


def _clip(root: Path, row: dict[str, str], classes: list[str]) -> Clip:
    filename = row["filename"]
    return Clip(
        id=Path(filename).stem,
        source=str(root / filename),
        labels=(classes.index(row["scene_label"]),),
        device=row["source_label"] or None,
        city=row["identifier"].split("-", 1)[0] or None,
    )
