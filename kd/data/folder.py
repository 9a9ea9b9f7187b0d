"""``folder:DIR``: every audio file below a folder, without labels: a transfer set for ``kd distill --transfer``.

Recordings a user has no labels for (a field recorder's card, a crawl of sound libraries) are where a teacher's
knowledge reaches the student beyond its labelled clips. A clip's id is its path below ``DIR`` without the
extension (``site3/2024-05-01_0930``); the task and the class vocabulary come from the labelled dataset the
folder is used with, never from the folder.
"""
from __future__ import annotations

from pathlib import Path

from .base import Dataset
from .clip import Clip
from .errors import DatasetError

__all__ = ["AUDIO_SUFFIXES", "open_folder"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


def open_folder(path: Path, split: str | None = None) -> Dataset:
    """Opens every audio file below ``path`` (sorted, recursively) as one unlabelled split."""
    spec = f"folder:{path}"
    if not path.is_dir():
        raise DatasetError(f"{spec}: no such folder")
    if split not in (None, "train"):
        raise DatasetError(f"{spec}: a folder of audio has no splits (asked for {split!r})")
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
    if not files:
        raise DatasetError(f"{spec}: no audio files ({', '.join(AUDIO_SUFFIXES)}) below the folder")
    clips = [Clip(id=f.relative_to(path).with_suffix("").as_posix(), source=str(f), labelled=False) for f in files]
    return Dataset(clips=clips, classes=[], task=None, name=path.name, split=split, spec=spec)
