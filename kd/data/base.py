"""The dataset object every reader returns: clips, class vocabulary, hard targets, audio access, fingerprint."""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kd.tasks import Task, get_task

from .audio import decode_audio, load_audio
from .clip import Clip
from .errors import AudioError, DatasetError

__all__ = ["SPLIT_ALIASES", "ClipLengths", "Dataset", "canonical_split", "read_class_list", "read_table"]

SPLIT_ALIASES = {"evaluate": "eval", "evaluation": "eval", "val": "eval"}
LENGTH_SAMPLE = 64  # clips decoded to estimate the length when the metadata states none
LENGTH_TOLERANCE = 0.1  # lengths "vary" when the 10th percentile is more than this fraction below the 90th
SHORT_FRACTION = 0.5  # a clip under this fraction of the short end of the dataset's lengths is "too short"


@dataclass(frozen=True)
class ClipLengths:
    """The outcome of the clip-length policy (:meth:`Dataset.clip_lengths`).

    Attributes:
        seconds: The length clips are taught and trained at.
        chosen_by: ``p90`` (the 90th percentile of the lengths), ``--seconds`` (given by the user) or ``shortest
            input`` (``kd teach`` raised the 90th percentile to the shortest input its teachers take).
        source: Where the lengths come from: ``metadata`` (every clip), or a decoded sample of clips.
        count: How many lengths the statistics are over; ``unusable``: sampled clips that did not decode to
            usable audio (unreadable, empty, silent).
        min, p10, median, p90, max: The spread of the lengths in seconds (None when no length is known).
    """

    seconds: float
    chosen_by: str
    source: str
    count: int
    unusable: int
    min: float | None
    p10: float | None
    median: float | None
    p90: float | None
    max: float | None

    @property
    def variable(self) -> bool:
        """Whether lengths vary: the short end (10th percentile) is over 10 % below the long end (90th)."""
        return self.p10 is not None and self.p10 < (1 - LENGTH_TOLERANCE) * self.p90

    @property
    def min_seconds(self) -> float:
        """Clips shorter than this are flagged, not padded: half of the chosen length or of the short end
        of the dataset's lengths, whichever is less, so genuinely short clips of a variable dataset pass."""
        short_end = self.seconds if self.p10 is None else min(self.seconds, self.p10)
        return SHORT_FRACTION * short_end

    def describe(self) -> str:
        """One line: what was chosen, how, and the spread of the lengths."""
        how = {"--seconds": "given by --seconds", "p90": "the 90th percentile",
               "shortest input": "the teachers' shortest input, above the 90th percentile"}[self.chosen_by]
        if self.p10 is None:
            return f"{self.seconds:.4g} s ({how}; no clip length known from the data)"
        middle = f"{self.p90:g} s" if self.p10 == self.p90 else f"{self.p10:g}-{self.p90:g} s"
        spread = f"lengths {self.min:g}-{self.max:g} s, 80 % of them {middle}, median {self.median:g} s"
        skipped = f", {self.unusable} unusable" if self.unusable else ""
        return f"{self.seconds:.4g} s ({how}; {spread}; from {self.source}{skipped})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "variable": self.variable, "min_seconds": self.min_seconds}


def canonical_split(split: str | None) -> str | None:
    """``evaluate`` (TAU22's name), ``evaluation`` and ``val`` all mean ``eval``."""
    if split is None:
        return None
    split = split.strip().lower()
    return SPLIT_ALIASES.get(split, split)


class Dataset:
    """A labelled (or unlabelled) list of clips of one split, with the ways to read them.

    Plain Python (no torch), picklable, so that DataLoader and dask workers each get a copy; HDF5 handles are
    opened lazily in whichever process reads.

    Attributes:
        clips: The clips of the split, in the order of the metadata.
        classes: Class display names; index ``i`` is the ``i``-th entry of every target vector.
        mids: AudioSet machine ids of the classes (``None`` where the format has none).
        task: The :class:`kd.tasks.Task`: single-label scenes (``asc``), multi-label tags (``tagging``) or strong
            labels (``sed``); ``None`` for audio without any labels (``folder:DIR``), whose task and classes
            come from the labelled dataset it is used with.
        name: Short name (the folder or file name).
        split: The canonical split (``train``, ``eval``, ...) or ``None`` for a whole manifest.
        spec: ``FORMAT:PATH`` that reopens this dataset.
        has_labels: Whether any clip carries labels.
        seen_devices: For ASC, devices of the training split (the rest are "unseen"); ``None`` if unknown.
        skipped: ``(clip id, reason)`` of metadata entries left out (e.g. an AudioSet segment without audio).
    """

    def __init__(
        self,
        *,
        clips: Sequence[Clip],
        classes: Sequence[str],
        task: str | Task | None,
        name: str,
        split: str | None,
        spec: str,
        mids: Sequence[str] | None = None,
        seen_devices: Sequence[str] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.clips = list(clips)
        self.classes = list(classes)
        self.mids = None if mids is None else list(mids)
        self.task = None if task is None else get_task(task)
        self.name, self.split, self.spec = name, split, spec
        self.seen_devices = None if seen_devices is None else sorted(seen_devices)
        self.skipped = list(skipped)
        self._fingerprint: str | None = None
        self._check_ids()

    def _check_ids(self) -> None:
        counts = Counter(c.id for c in self.clips)
        dupes = [i for i, n in counts.items() if n > 1]
        if dupes:
            raise DatasetError(
                f"{self.spec}: {len(dupes)} clip ids occur more than once (e.g. {', '.join(sorted(dupes)[:3])}); "
                "clip ids are the join key with stored logits and must be unique"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def __getitem__(self, index: int) -> Clip:
        return self.clips[index]

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.spec!r}, split={self.split!r}, clips={len(self)}, classes={len(self.classes)})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        return any(c.labelled for c in self.clips)

    @property
    def labelled_clips(self) -> list[Clip]:
        return [c for c in self.clips if c.labelled]

    @property
    def unlabelled_clips(self) -> list[Clip]:
        return [c for c in self.clips if not c.labelled]

    def unlabelled(self) -> Dataset:
        """This dataset with every clip's labels dropped: a transfer set, labelled only by teachers.

        The copy keeps the clips, their audio and recording devices; its targets are refused, so a clip whose
        labels are ignored can never become an "all classes absent" target.
        """
        return self.subset([replace(c, labels=(), events=(), labelled=False) for c in self.clips])

    def subset(self, clips: Sequence[Clip]) -> Dataset:
        """A dataset of the same source, vocabulary and task holding only ``clips``."""
        part = copy.copy(self)
        part.clips, part._fingerprint = list(clips), None
        return part

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clips]

    @property
    def devices(self) -> list[str]:
        """Sorted recording devices present in this split (empty if the format records none)."""
        return sorted({c.device for c in self.clips if c.device is not None})

    @property
    def unseen_devices(self) -> list[str] | None:
        """Devices of this split that the training split never saw (TAU22: ``s4``, ``s5``, ``s6``)."""
        if self.seen_devices is None:
            return None
        return [d for d in self.devices if d not in self.seen_devices]

    # --- targets ---------------------------------------------------------------------------------------------

    def targets(self, clip: Clip) -> np.ndarray:
        """Clip-level hard target: float32 ``[C]``, one-hot for ASC, multi-hot for tagging and SED."""
        self._check_labelled(clip)
        out = np.zeros(self.num_classes, dtype=np.float32)
        out[list(clip.labels)] = 1.0
        return out

    def frame_targets(self, clip: Clip, frames_per_second: float, num_frames: int | None = None) -> np.ndarray:
        """Strong labels as float32 ``[T, C]`` frames at ``frames_per_second``.

        Frame ``t`` covers ``[t / fps, (t + 1) / fps)``. An event marks every frame it covers by at least half
        (whose centre lies in ``[onset, offset]``; ties round up), and always at least one frame, so events
        shorter than a frame are not lost. ``num_frames`` defaults to ``ceil(duration * fps)`` when the clip's
        duration is known; events beyond it are cut.
        """
        if self.task is None or not self.task.frame_level:
            raise DatasetError(f"{self.spec}: a {self.task} dataset has no strong labels to make frame targets from")
        self._check_labelled(clip)
        if num_frames is None:
            if clip.duration is None:
                raise DatasetError(f"{self.spec}: clip {clip.id} has no known duration; pass num_frames")
            num_frames = int(np.ceil(clip.duration * frames_per_second - 1e-9))
        out = np.zeros((num_frames, self.num_classes), dtype=np.float32)
        for event in clip.events:
            first = int(np.floor(event.onset * frames_per_second + 0.5))
            last = max(first + 1, int(np.floor(event.offset * frames_per_second + 0.5)))
            out[max(first, 0):min(last, num_frames), event.label] = 1.0
        return out

    def _check_labelled(self, clip: Clip) -> None:
        if not clip.labelled:
            raise DatasetError(f"{self.spec}: clip {clip.id} has no labels (it can only be a transfer clip)")

    # --- audio -----------------------------------------------------------------------------------------------

    def read_source(self, clip: Clip) -> str | bytes:
        """What the decoder reads: the file path (bytes for HDF5 rows, see the HDF5 reader)."""
        return clip.source

    def load_audio(self, clip: Clip, sample_rate: int, seconds: float | None = None, *, pad: bool = True,
                   min_seconds: float | None = None) -> np.ndarray:
        """The clip as float32 mono at ``sample_rate``, cropped to ``seconds`` (and padded to it with ``pad``).

        Raises:
            AudioError: with a short ``reason`` when the clip is missing, empty, corrupt, silent, non-finite or
                shorter than ``min_seconds``.
        """
        return load_audio(self.read_source(clip), sample_rate, seconds, clip_id=clip.id, pad=pad,
                          min_seconds=min_seconds)

    def clip_lengths(self, seconds: float | None = None, sample: int = LENGTH_SAMPLE) -> ClipLengths:
        """The clip length to teach and train at, how it was chosen, and how much this dataset's lengths vary.

        The lengths are the metadata's durations when every clip states one, else the decoded lengths of up to
        ``sample`` clips spread evenly over the split (clips that do not decode are counted and skipped). The
        chosen length is ``seconds`` when given, else the 90th percentile of those lengths: one truncated or
        odd file cannot decide it, and nine clips in ten fit in it whole.

        Raises:
            DatasetError: no length is given, the metadata states none and no sampled clip decodes.
        """
        stated = [c.duration for c in self.clips]
        if self.clips and all(d is not None and d > 0 for d in stated):
            lengths, source, unusable = [float(d) for d in stated], "metadata", 0
        else:
            lengths, unusable = self._decoded_lengths(sample)
            source = f"decoded sample of {len(lengths) + unusable} clips"
        if not lengths and seconds is None:
            raise DatasetError(f"{self.spec}: none of the {unusable} sampled clips decodes to usable audio "
                               "and the metadata states no durations, so the clip length is unknown; pass --seconds")
        stats = np.percentile(lengths, [0, 10, 50, 90, 100]).round(4).tolist() if lengths else [None] * 5
        chosen = float(seconds) if seconds is not None else round(stats[3], 3)
        return ClipLengths(seconds=chosen, chosen_by="--seconds" if seconds is not None else "p90", source=source,
                           count=len(lengths), unusable=unusable, min=stats[0], p10=stats[1],
                           median=stats[2], p90=stats[3], max=stats[4])

    def _decoded_lengths(self, sample: int) -> tuple[list[float], int]:
        picks = np.unique(np.linspace(0, len(self.clips) - 1, min(sample, len(self.clips))).round().astype(int))
        lengths, unusable = [], 0
        for i in picks.tolist():
            clip = self.clips[i]
            try:
                audio, rate = decode_audio(self.read_source(clip), clip.id)
            except AudioError:
                unusable += 1
                continue
            lengths.append(len(audio) / rate)
        return lengths, unusable

    def clip_seconds(self) -> float:
        """The length this dataset's clips are taught and trained at when none is given (see :meth:`clip_lengths`)."""
        return self.clip_lengths().seconds

    # --- identity --------------------------------------------------------------------------------------------

    def source_sizes(self) -> list[int]:
        """Byte size of each clip's source (-1 for a missing file), in clip order."""
        sizes = []
        for clip in self.clips:
            try:
                sizes.append(os.stat(clip.source).st_size)
            except OSError:
                sizes.append(-1)
        return sizes

    def fingerprint(self) -> str:
        """A stable sha256 of the clip ids, their sources' sizes and the class list.

        Independent of where the dataset lives and of the order of the metadata rows, so that a moved copy
        matches; any added, removed or re-encoded clip, or a changed vocabulary, changes it.
        """
        if self._fingerprint is None:
            rows = sorted(zip(self.ids, self.source_sizes(), strict=True))
            payload = {"task": self.task and self.task.name, "classes": self.classes, "mids": self.mids, "clips": rows}
            blob = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
            self._fingerprint = hashlib.sha256(blob).hexdigest()
        return self._fingerprint


def read_table(path: Path, *, delimiter: str | None = None, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Reads a CSV/TSV with a header row; checks ``required`` columns are present.

    The delimiter is a tab for ``.tsv`` files and sniffed (tab or comma) otherwise.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: empty file")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delimiter, skipinitialspace=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(header)})")
    rows = []
    for n, row in enumerate(reader, start=2):
        if None in row:
            raise DatasetError(f"{path}: line {n} has more fields than the header")
        rows.append({k: (v or "").strip() for k, v in row.items()})
    return rows


def read_class_list(path: Path) -> tuple[list[str], list[str] | None]:
    """Reads a class vocabulary: ``class_labels_indices.csv`` (``index,mid,display_name``) or one name per line.

    Returns:
        ``(display names, mids)`` ordered by ``index`` when present; ``mids`` is None for a plain list.
    """
    if not path.is_file():
        raise DatasetError(f"missing class list {path}")
    first = path.read_text(encoding="utf-8-sig").splitlines()[:1]
    if first and "display_name" in first[0]:
        rows = read_table(path, required=("mid", "display_name"))
        if "index" in rows[0]:
            try:
                rows.sort(key=lambda r: int(r["index"]))
            except ValueError:
                raise DatasetError(f"{path}: column index must hold integers") from None
            if [int(r["index"]) for r in rows] != list(range(len(rows))):
                raise DatasetError(f"{path}: column index must run 0..{len(rows) - 1} without gaps")
        mids = [r["mid"] for r in rows]
        _check_unique(path, mids, "mid")
        return [r["display_name"] for r in rows], mids
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: empty class list")
    _check_unique(path, names, "class")
    return names, None


def _check_unique(path: Path, values: Sequence[str], what: str) -> None:
    dupes = sorted(v for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise DatasetError(f"{path}: {len(dupes)} {what} name(s) listed twice (e.g. {', '.join(dupes[:3])})")
