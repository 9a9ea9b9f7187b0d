"""AudioSet-Strong (Hershey et al., ICASSP 2021): temporally strong labels joined to the audio.

Layout of ``audioset-strong:DIR``: ``audioset_train_strong.tsv`` / ``audioset_eval_strong.tsv`` (tab-separated,
header ``segment_id  start_time_seconds  end_time_seconds  label``; ``segment_id`` is ``<ytid>_<start ms>``, times
are relative to the segment start, ``label`` a MID), optionally ``mid_to_display_name.tsv`` (no header:
``mid  display name``), and the audio files anywhere under the folder (or ``audio_dir``) named as
:class:`kd.data.audioset.AudioIndex` accepts, e.g. ``<segment_id>.wav`` or ``Y<ytid>_30.000_40.000.wav``.

Vocabulary: ``classes=`` (a class list file) if given, else the sorted MIDs of the train TSV (the field's 447
classes), so train and eval share one class order. Eval events whose MID is not in it are dropped with a warning.
Clip ids are the segment ids; each clip's weak labels are the classes of its events.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

from kd.tasks import SED

from .audioset import AudioIndex, mid_lookup
from .base import Dataset, canonical_split, read_class_list, read_table
from .clip import Clip, Event
from .errors import DatasetError

__all__ = ["STRONG_FILES", "open_audioset_strong", "read_strong_tsv"]

STRONG_FILES = {"train": "audioset_train_strong.tsv", "eval": "audioset_eval_strong.tsv"}
COLUMNS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")
SEGMENT_SECONDS = 10.0


def read_strong_tsv(path: Path) -> list[tuple[str, float, float, str]]:
    """Rows ``(segment_id, onset, offset, mid)``; checks the columns and that onset <= offset."""
    rows = []
    for n, row in enumerate(read_table(path, delimiter="\t", required=COLUMNS), start=2):
        try:
            onset, offset = float(row["start_time_seconds"]), float(row["end_time_seconds"])
        except ValueError:
            raise DatasetError(f"{path}: line {n}: start_time_seconds/end_time_seconds are not numbers") from None
        if offset < onset:
            raise DatasetError(f"{path}: line {n}: end_time_seconds {offset} is before start_time_seconds {onset}")
        rows.append((row["segment_id"], onset, offset, row["label"]))
    return rows


def _display_names(folder: Path, mids: list[str]) -> list[str]:
    path = folder / "mid_to_display_name.tsv"
    if not path.is_file():
        return list(mids)
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            mid, _, name = line.partition("\t")
            names[mid.strip()] = name.strip() or mid.strip()
    return [names.get(m, m) for m in mids]


def _segment_start(segment_id: str) -> tuple[str, float]:
    ytid, sep, ms = segment_id.rpartition("_")
    if not sep or not ms.isdigit():
        return segment_id, 0.0
    return ytid, int(ms) / 1000.0


def open_audioset_strong(
    path: Path, split: str | None = None, classes: str | Path | None = None, audio_dir: str | Path | None = None
) -> Dataset:
    """Opens split ``train`` (default) or ``eval`` of an AudioSet-Strong folder; see the module docstring."""
    spec = f"audioset-strong:{path}"
    if not path.is_dir():
        raise DatasetError(f"{spec}: not a folder")
    split = canonical_split(split) or "train"
    if split not in STRONG_FILES:
        raise DatasetError(f"{spec}: unknown split {split!r}; use train or eval")
    tsv = path / STRONG_FILES[split]
    if not tsv.is_file():
        raise DatasetError(f"{spec}: missing {tsv.name} for split {split}")
    rows = read_strong_tsv(tsv)
    if classes is not None:
        names, mids = read_class_list(Path(classes))
    else:
        vocab_file = path / STRONG_FILES["train"] if (path / STRONG_FILES["train"]).is_file() else tsv
        mids = sorted({mid for *_, mid in (rows if vocab_file == tsv else read_strong_tsv(vocab_file))})
        names = _display_names(path, mids)
    index_of = mid_lookup(mids, spec)

    events: dict[str, list[Event]] = defaultdict(list)
    dropped = 0
    for segment_id, onset, offset, mid in rows:
        if mid not in index_of:
            dropped += 1
            events.setdefault(segment_id, [])
            continue
        events[segment_id].append(Event(onset, offset, index_of[mid]))
    if dropped:
        warnings.warn(f"{tsv}: {dropped} events with MIDs outside the {len(mids)}-class vocabulary are dropped",
                      stacklevel=2)

    audio = AudioIndex(Path(audio_dir) if audio_dir is not None else path)
    clips, skipped = [], []
    for segment_id, clip_events in events.items():
        ytid, start = _segment_start(segment_id)
        file = audio.find(ytid, start, start + SEGMENT_SECONDS)
        if file is None:
            skipped.append((segment_id, "no audio file"))
            continue
        clip_events.sort(key=lambda e: (e.onset, e.offset, e.label))
        clips.append(Clip(id=segment_id, source=str(file), labels=tuple(sorted({e.label for e in clip_events})),
                          events=tuple(clip_events)))
    if not clips:
        raise DatasetError(f"{spec}: none of the {len(skipped)} segments of {tsv.name} has an audio file under "
                           f"{audio.root} (searched {len(audio)} audio files)")
    if skipped:
        warnings.warn(f"{spec}: {len(skipped)} of {len(events)} segments have no audio file and are skipped",
                      stacklevel=2)
    return Dataset(clips=clips, classes=names, mids=mids, task=SED, name=path.name, split=split, spec=spec,
                   skipped=skipped)
