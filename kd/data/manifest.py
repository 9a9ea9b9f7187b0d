"""A generic manifest: a CSV/TSV listing audio files and their labels, for any other dataset.

Columns (header required; ``.tsv`` files are tab-separated, others sniffed between tab and comma):

* ``path`` (or ``filename``/``file``): the audio file; relative paths are resolved against the manifest's folder.
* ``label`` or ``labels``: class names; several per clip separated by ``,``, ``;`` or ``|`` (quote the field in
  a CSV when it holds commas). Every labelled clip with exactly one label makes a single-label (``asc``)
  dataset; any with several makes it multi-label (``tagging``). A row with an empty label is an **unlabelled**
  clip (a transfer clip that only teachers label, see ``kd distill``), never a clip without classes; a
  manifest whose label column is empty throughout is unlabelled (its classes come from ``classes=`` or from
  the labelled dataset it is used with).
* optional ``id`` (default: the path relative to the manifest, without extension), ``split`` (rows are selected
  with ``split=``; without a split column, or with ``split=None``, all rows are used), ``device``, ``city``,
  ``duration``.

The vocabulary is ``classes=`` (one name per line, or a ``class_labels_indices.csv``) if given, else the sorted
label names of all rows of the manifest, whatever the split, so all splits share it. The devices of rows with
split ``train`` are the seen devices.
"""
from __future__ import annotations

import re
from pathlib import Path

from kd.tasks import ASC, TAGGING, get_task

from .base import Dataset, canonical_split, read_class_list, read_table
from .clip import Clip
from .errors import DatasetError

__all__ = ["open_manifest"]

PATH_COLUMNS = ("path", "filename", "file")
LABEL_COLUMNS = ("labels", "label")
SEPARATORS = re.compile(r"[,;|]")


def _column(rows: list[dict[str, str]], options: tuple[str, ...], file: Path, what: str) -> str:
    for name in options:
        if name in rows[0]:
            return name
    raise DatasetError(f"{file}: no {what} column (expected one of {', '.join(options)}; "
                       f"header has: {', '.join(rows[0])})")


def open_manifest(path: Path, split: str | None = None, classes: str | Path | None = None,
                  task: str | None = None) -> Dataset:
    """Opens a manifest (see the module docstring); ``task`` overrides the asc/tagging inference."""
    spec = f"manifest:{path}"
    if not path.is_file():
        raise DatasetError(f"{spec}: no such file")
    rows = read_table(path)
    path_col = _column(rows, PATH_COLUMNS, path, "path")
    label_col = _column(rows, LABEL_COLUMNS, path, "label")
    label_lists = [[s.strip() for s in SEPARATORS.split(row[label_col]) if s.strip()] for row in rows]
    labelled = [labels for labels in label_lists if labels]
    if classes is not None:
        names, mids = read_class_list(Path(classes))
        lookup = {n: i for i, n in enumerate(names)} | ({m: i for i, m in enumerate(mids)} if mids else {})
        unknown = sorted({label for labels in label_lists for label in labels if label not in lookup})
        if unknown:
            raise DatasetError(f"{path}: {len(unknown)} label(s) are not in the class list {classes} "
                               f"(e.g. {', '.join(unknown[:3])})")
    else:
        names, mids = sorted({label for labels in label_lists for label in labels}), None
        lookup = {n: i for i, n in enumerate(names)}
    if labelled:
        task = get_task(task) if task else (ASC if all(len(labels) == 1 for labels in labelled) else TAGGING)
        if task.frame_level:
            raise DatasetError(f"{spec}: a manifest holds clip labels; task must be asc or tagging, not {task}")
        if task.single_label and any(len(labels) != 1 for labels in labelled):
            raise DatasetError(f"{path}: task {task} needs exactly one label per labelled row in column {label_col}")
    elif task is not None:
        raise DatasetError(f"{spec}: task {task} given, but no row has a label")

    split = canonical_split(split)
    has_split = "split" in rows[0]
    if split is not None and not has_split:
        raise DatasetError(f"{path}: split {split!r} requested but the manifest has no split column")
    seen = {row.get("device", "") for row in rows if has_split and canonical_split(row["split"]) == "train"}
    clips = []
    for n, (row, labels) in enumerate(zip(rows, label_lists, strict=True), start=2):
        if split is not None and canonical_split(row["split"]) != split:
            continue
        if not row[path_col]:
            raise DatasetError(f"{path}: line {n}: empty {path_col}")
        audio = (path.parent / row[path_col]).resolve()
        clips.append(Clip(
            id=row.get("id") or str(Path(row[path_col]).with_suffix("")),
            source=str(audio),
            labels=tuple(sorted({lookup[label] for label in labels})),
            labelled=bool(labels),
            device=row.get("device") or None,
            city=row.get("city") or None,
            duration=_number(row.get("duration"), path, n),
        ))
    if not clips:
        raise DatasetError(f"{path}: no rows with split {split!r}")
    seen.discard("")
    return Dataset(clips=clips, classes=names, mids=mids, task=task if labelled else None, name=path.stem, split=split, spec=spec,
                   seen_devices=sorted(seen) if seen else None)


def _number(value: str | None, path: Path, line: int) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise DatasetError(f"{path}: line {line}: duration {value!r} is not a number") from None
