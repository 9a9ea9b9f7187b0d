"""AudioSet (Gemmeke et al., 2017) in its two common layouts, with weak (clip-level) labels.

* ``audioset-hdf5``: the HDF5 files of the PaSST/EfficientAT preprocessing (``balanced_train_segments_mp3.hdf``,
  ``unbalanced_train_segments_mp3.hdf``, ``eval_segments_mp3.hdf``): datasets ``audio_name`` (bytes such as
  ``Y<youtube id>.mp3``), ``mp3`` (variable-length uint8: the mp3 file of each clip, 32 kHz mono) and ``target``
  (the multi-hot labels packed with ``np.packbits``). The class order comes from ``class_labels_indices.csv``.
* ``audioset``: a folder of downloaded audio files plus the official segment CSVs (``balanced_train_segments.csv``
  etc.: ``YTID, start_seconds, end_seconds, positive_labels`` with quoted comma-separated MIDs, ``#`` comments)
  and ``class_labels_indices.csv`` (``index,mid,display_name``).

Clip ids are the YouTube ids: the ``audio_name`` without its extension and the leading ``Y`` that the
preprocessing prepends (ids may start with ``-``), or the ``YTID`` column.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from kd.tasks import TAGGING

from .base import Dataset, canonical_split, read_class_list
from .clip import Clip
from .errors import AudioError, DatasetError

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioIndex",
    "AudioSetHDF5Dataset",
    "find_class_list",
    "open_audioset_folder",
    "open_audioset_hdf5",
    "read_segments_csv",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus")
SEGMENT_FILES = {
    "balanced_train": "balanced_train_segments",
    "unbalanced_train": "unbalanced_train_segments",
    "eval": "eval_segments",
}
TRAIN_PARTS = ("balanced_train", "unbalanced_train")
HDF5_SUFFIXES = (".hdf", ".h5", ".hdf5")
CLASS_LIST = "class_labels_indices.csv"


def _split_parts(split: str, spec: str) -> tuple[str, ...]:
    """``train`` means every training part present (balanced + unbalanced); the others name one part."""
    if split == "train":
        return TRAIN_PARTS
    if split in SEGMENT_FILES:
        return (split,)
    raise DatasetError(f"{spec}: unknown split {split!r}; use train, balanced_train, unbalanced_train or eval")


def find_class_list(start: Path, explicit: str | Path | None = None) -> tuple[list[str], list[str] | None]:
    """The vocabulary for an AudioSet file or folder: ``explicit`` if given, else ``class_labels_indices.csv``
    beside ``start``, in a ``metadata/`` folder there, or the same in up to three parent folders."""
    if explicit is not None:
        return read_class_list(Path(explicit))
    folder = start if start.is_dir() else start.parent
    for parent in [folder, *folder.parents][:4]:
        for candidate in (parent / CLASS_LIST, parent / "metadata" / CLASS_LIST):
            if candidate.is_file():
                return read_class_list(candidate)
    raise DatasetError(
        f"{start}: no {CLASS_LIST} beside it, in a metadata/ folder near it or in its parents; "
        "pass the class list explicitly (classes=...)"
    )


def youtube_id(audio_name: str) -> str:
    """``Y--PJHxphWEs.mp3`` -> ``--PJHxphWEs`` (extension and the preprocessing's ``Y`` prefix dropped)."""
    stem = audio_name.rsplit("/", 1)[-1]
    root, ext = os.path.splitext(stem)
    if ext.lower() in AUDIO_EXTENSIONS:
        stem = root
    return stem[1:] if stem.startswith("Y") and len(stem) > 1 else stem


class AudioSetHDF5Dataset(Dataset):
    """Clips stored as mp3 bytes in HDF5 files; ``Clip.source`` is the file and ``Clip.row`` the row.

    Files are opened lazily and once per process (a handle inherited through ``fork`` is not reused).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._handles: dict[str, object] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _file(self, path: str):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = h5py.File(path, "r")
        return self._handles[path]

    def read_source(self, clip: Clip) -> bytes:
        try:
            data = self._file(clip.source)["mp3"][clip.row]
        except (OSError, KeyError, IndexError, ValueError) as e:
            raise AudioError(clip.id, f"unreadable HDF5 row {clip.row} of {clip.source}: {e}") from None
        return np.asarray(data, dtype=np.uint8).tobytes()

    def source_sizes(self) -> list[int]:
        """The HDF5 file's size for each clip (reading every row's length would read the whole file)."""
        sizes = {path: os.stat(path).st_size for path in {c.source for c in self.clips}}
        return [sizes[c.source] for c in self.clips]


def _hdf5_split(path: Path) -> str:
    stem = path.stem.lower()
    for split, prefix in SEGMENT_FILES.items():
        if stem.startswith(prefix):
            return split
    return "eval" if "eval" in stem or "test" in stem else "train"


def _hdf5_files(root: Path, split: str, spec: str) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in HDF5_SUFFIXES and p.is_file())
    chosen = [p for p in files for part in _split_parts(split, spec) if p.stem.startswith(SEGMENT_FILES[part])]
    if not chosen:
        wanted = ", ".join(f"{SEGMENT_FILES[p]}*.hdf" for p in _split_parts(split, spec))
        raise DatasetError(f"{spec}: no HDF5 file for split {split} under {root} (looked for {wanted})")
    return chosen


def _read_hdf5_rows(path: Path, num_classes: int) -> tuple[list[str], list[tuple[int, ...]] | None]:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in ("audio_name", "mp3") if k not in f]
        if missing:
            raise DatasetError(f"{path}: missing HDF5 dataset(s) {', '.join(missing)} (has: {', '.join(f.keys())})")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["audio_name"][:]]
        if len(f["mp3"]) != len(names):
            raise DatasetError(f"{path}: mp3 has {len(f['mp3'])} rows but audio_name has {len(names)}")
        if "target" not in f:
            return names, None
        target = f["target"]
        packed = (num_classes + 7) // 8
        if target.ndim != 2 or target.shape != (len(names), packed):
            raise DatasetError(
                f"{path}: target has shape {target.shape}; expected ({len(names)}, {packed}): "
                f"{num_classes} classes packed with np.packbits"
            )
        labels: list[tuple[int, ...]] = []
        for start in range(0, len(names), 65536):
            bits = np.unpackbits(target[start:start + 65536], axis=1, count=num_classes)
            labels.extend(tuple(np.flatnonzero(row).tolist()) for row in bits)
        return names, labels


def open_audioset_hdf5(path: Path, split: str | None = None, classes: str | Path | None = None) -> Dataset:
    """Opens one HDF5 file (the file is the split) or a folder holding the split files.

    Splits of a folder: ``train`` (balanced + unbalanced parts present, the default), ``balanced_train``,
    ``unbalanced_train``, ``eval``. A single file is the split its name says (``*eval*`` is ``eval``,
    anything else a training part); asking a file for another split is an error.
    """
    spec = f"audioset-hdf5:{path}"
    split = canonical_split(split)
    if path.is_dir():
        split = split or "train"
        files = _hdf5_files(path, split, spec)
    elif path.is_file():
        own = _hdf5_split(path)
        if split not in (None, own) and not (split == "train" and own in TRAIN_PARTS):
            raise DatasetError(f"{spec}: this file holds split {own}, not {split}; pass the folder to choose splits")
        split, files = split or own, [path]
    else:
        raise DatasetError(f"{spec}: no such file or folder")
    names, mids = find_class_list(path, classes)
    clips: list[Clip] = []
    for file in files:
        audio_names, labels = _read_hdf5_rows(file, len(names))
        for row, audio_name in enumerate(audio_names):
            clips.append(Clip(id=youtube_id(audio_name), source=str(file), row=row,
                              labels=labels[row] if labels is not None else (), labelled=labels is not None))
    return AudioSetHDF5Dataset(clips=clips, classes=names, mids=mids, task=TAGGING, name=path.name, split=split,
                               spec=spec)


# --- the folder layout -----------------------------------------------------------------------------------------


def read_segments_csv(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """Rows ``(ytid, start_seconds, end_seconds, [mid, ...])`` of an official AudioSet segment CSV."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    rows = []
    for n, fields in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        if not fields or fields[0].startswith("#") or fields[0] == "YTID":
            continue
        if len(fields) != 4:
            raise DatasetError(f"{path}: line {n} has {len(fields)} fields; expected YTID, start_seconds, "
                               "end_seconds, positive_labels")
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise DatasetError(f"{path}: line {n}: start_seconds/end_seconds are not numbers") from None
        rows.append((fields[0].strip(), start, end, [m.strip() for m in fields[3].split(",") if m.strip()]))
    return rows


class AudioIndex:
    """Finds a segment's audio file among the names downloaders use.

    Accepted file stems (any of :data:`AUDIO_EXTENSIONS`, anywhere under the folder): ``<ytid>``, ``Y<ytid>``,
    ``<ytid>_<start ms>`` (AudioSet-Strong's segment id), ``<ytid>_<start>_<end>`` with seconds as integers or with
    three decimals (``Y--PJHxphWEs_30.000_40.000``, the PANNs naming), each optionally with the ``Y`` prefix.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
                self.files.setdefault(path.stem, path)

    def __len__(self) -> int:
        return len(self.files)

    @staticmethod
    def candidates(ytid: str, start: float, end: float) -> Iterable[str]:
        ms = round(start * 1000)
        for stem in (f"{ytid}_{ms}", f"{ytid}_{start:.3f}_{end:.3f}", f"{ytid}_{start:g}_{end:g}",
                     f"{ytid}_{int(start)}_{int(end)}", f"{ytid}_{int(start)}", ytid):
            yield stem
            yield f"Y{stem}"

    def find(self, ytid: str, start: float, end: float) -> Path | None:
        for stem in self.candidates(ytid, start, end):
            if stem in self.files:
                return self.files[stem]
        return None


def mid_lookup(mids: Sequence[str] | None, spec: str) -> dict[str, int]:
    if mids is None:
        raise DatasetError(f"{spec}: the class list has no mid column; AudioSet labels are MIDs")
    return {m: i for i, m in enumerate(mids)}


def open_audioset_folder(
    path: Path, split: str | None = None, classes: str | Path | None = None, audio_dir: str | Path | None = None
) -> Dataset:
    """Opens a folder with the official segment CSVs, ``class_labels_indices.csv`` and downloaded audio.

    The CSVs and class list may sit in the folder or a ``metadata/`` subfolder; audio files are searched under
    ``audio_dir`` (default: the folder itself), see :class:`AudioIndex`. Segments without an audio file are
    normal for AudioSet (videos disappear): they are left out and listed in ``skipped``.
    Splits as for the HDF5 layout: ``train`` (default: balanced + unbalanced CSVs present), ``balanced_train``,
    ``unbalanced_train``, ``eval``.
    """
    spec = f"audioset:{path}"
    if not path.is_dir():
        raise DatasetError(f"{spec}: not a folder")
    split = canonical_split(split) or "train"
    csvs = []
    for part in _split_parts(split, spec):
        for folder in (path, path / "metadata"):
            if (folder / f"{SEGMENT_FILES[part]}.csv").is_file():
                csvs.append(folder / f"{SEGMENT_FILES[part]}.csv")
                break
    if not csvs:
        wanted = ", ".join(f"{SEGMENT_FILES[p]}.csv" for p in _split_parts(split, spec))
        raise DatasetError(f"{spec}: no segment CSV for split {split} in {path} or {path / 'metadata'} ({wanted})")
    names, mids = find_class_list(path, classes)
    index_of = mid_lookup(mids, spec)
    audio = AudioIndex(Path(audio_dir) if audio_dir is not None else path)
    clips, skipped = [], []
    for csv_path in csvs:
        rows = read_segments_csv(csv_path)
        unknown = sorted({m for *_, labels in rows for m in labels if m not in index_of})
        if unknown:
            raise DatasetError(f"{csv_path}: {len(unknown)} MID(s) in positive_labels are not in the class list "
                               f"(e.g. {', '.join(unknown[:3])})")
        for ytid, start, end, labels in rows:
            file = audio.find(ytid, start, end)
            if file is None:
                skipped.append((ytid, "no audio file"))
                continue
            clips.append(Clip(id=ytid, source=str(file), labels=tuple(sorted({index_of[m] for m in labels})),
                              duration=end - start))
    if not clips:
        raise DatasetError(f"{spec}: none of the {len(skipped)} segments of split {split} has an audio file under "
                           f"{audio.root} (searched {len(audio)} audio files)")
    if skipped:
        warnings.warn(f"{spec}: {len(skipped)} of {len(skipped) + len(clips)} segments have no audio file and "
                      "are skipped", stacklevel=2)
    return Dataset(clips=clips, classes=names, mids=mids, task=TAGGING, name=path.name, split=split, spec=spec,
                   skipped=skipped)
