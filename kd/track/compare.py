"""``kd compare``: which teacher choice gives the best student, for which student.

Reads the finished distillation runs of one or more experiments from the tracking server and lines them up as
a table: one row per student (per experiment, when several are read), one column per teacher set (``none``,
training on labels alone, last), the student's best score on the task's primary metric in each cell. Runs that
repeat a cell (other seeds) are averaged: mean ± sample standard deviation over the runs, with their count.
Parameters that vary inside a cell other than the seed (say ``kd_lambda``) are reported, so that a cell never
silently mixes choices; ``by`` makes such parameters part of the column instead.

The table is returned as a :class:`CompareTable`; :func:`record_comparison` logs it (figure and JSON) as the
artifacts of a run of the ``compare`` experiment, :func:`plot_comparison` writes its figure.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from kd.evaluate.figures import GREY, new_figure
from kd.track.tracking import RunRecord, find_runs, tracked_run
from kd_errors import KdError

__all__ = ["COMPARE_EXPERIMENT", "Cell", "CompareTable", "StudentRow", "compare_runs", "comparison_figure", "plot_comparison",
           "record_comparison"]

COMPARE_EXPERIMENT = "compare"
LABELS_ONLY = "none"  # the teachers parameter of a run trained on labels alone
_NOT_CHOICES = {"seed"}  # parameters that may vary inside a cell: repeats of one choice


@dataclass(frozen=True)
class Cell:
    """The runs of one student and one teacher set: their scores and run ids."""

    values: tuple[float, ...]
    run_ids: tuple[str, ...]
    seeds: tuple[str, ...] = ()
    varying: tuple[str, ...] = ()  # parameters other than the seed that differ between the runs

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        """The sample standard deviation (``n - 1``) over the runs; None for a single run."""
        if len(self.values) < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))

    def __str__(self) -> str:
        return f"{self.mean:.4f}" + ("" if self.std is None else f" ± {self.std:.4f} (n={self.n})")


@dataclass(frozen=True)
class StudentRow:
    """A student of an experiment, the metric its cells hold, and its size (parameters, MACs per inference)."""

    experiment: str
    student: str
    metric: str
    params: float | None = None
    macs: float | None = None
    label: str = ""


@dataclass(frozen=True)
class CompareTable:
    """Students (``rows``) by teacher sets (``columns``); ``cell(row, column)`` is None where no run exists."""

    experiments: tuple[str, ...]
    rows: tuple[StudentRow, ...]
    columns: tuple[str, ...]
    cells: Mapping[tuple[str, str, str], Cell] = field(default_factory=dict)
    skipped: int = 0  # finished runs of the experiments that are no distillation or lack the primary metric

    def cell(self, row: StudentRow, column: str) -> Cell | None:
        return self.cells.get((row.experiment, row.student, column))

    def best_column(self, row: StudentRow) -> str | None:
        """The teacher set with the highest mean score for ``row``."""
        scored = [(cell.mean, column) for column in self.columns if (cell := self.cell(row, column))]
        return max(scored)[1] if scored else None

    @property
    def runs(self) -> int:
        return sum(cell.n for cell in self.cells.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiments": list(self.experiments), "columns": list(self.columns), "skipped_runs": self.skipped,
            "rows": [{"experiment": r.experiment, "student": r.student, "metric": r.metric, "params": r.params,
                      "macs": r.macs, "best": self.best_column(r), "cells": {
                          c: {"mean": cell.mean, "std": cell.std, "n": cell.n, "values": list(cell.values),
                              "seeds": list(cell.seeds), "run_ids": list(cell.run_ids), "varying": list(cell.varying)}
                          for c in self.columns if (cell := self.cell(r, c))}}
                     for r in self.rows],
        }


def compare_runs(experiments: Sequence[str] = (), *, run_ids: Sequence[str] = (), by: Sequence[str] = (),
                 tracking_uri: str | None = None) -> CompareTable:
    """The teacher-choice table of the distillation runs of ``experiments`` (default: every ``distill/*``
    experiment), or of exactly the runs ``run_ids``.

    Args:
        by: parameters (e.g. ``kd_lambda``, ``temperature``) whose values join the teacher set in the column key.

    Raises:
        KdError: no such experiment or run, or no finished distillation run among them.
    """
    records = find_runs(experiments, run_ids=run_ids, tracking_uri=tracking_uri)
    usable = [(r, metric) for r in records if (metric := _primary_metric(r)) and "student" in r.params]
    if not usable:
        where = ", ".join(experiments) or ("the given runs" if run_ids else "the distill/* experiments")
        raise KdError(f"no finished distillation run with a best score in {where}")
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    rows: dict[tuple[str, str], StudentRow] = {}
    several = len({r.experiment for r, _ in usable}) > 1
    for record, metric in usable:
        student = record.params["student"]
        groups[(record.experiment, student, _column(record, by))].append(record)
        if (record.experiment, student) not in rows:
            rows[(record.experiment, student)] = StudentRow(
                record.experiment, student, metric, record.metrics.get("params"), record.metrics.get("macs"),
                f"{student} ({record.experiment})" if several else student)
    cells = {key: _cell(runs, f"best_{rows[key[:2]].metric}", by) for key, runs in groups.items()}
    columns = sorted({key[2] for key in groups}, key=lambda c: (c.split(" | ")[0] == LABELS_ONLY, c))
    return CompareTable(
        experiments=tuple(sorted({r.experiment for r, _ in usable})), rows=tuple(sorted(rows.values(), key=_row_key)),
        columns=tuple(columns), cells=cells, skipped=len(records) - len(usable),
    )


def _primary_metric(record: RunRecord) -> str | None:
    """The metric a run's best checkpoint was chosen by (its ``primary_metric`` tag, or its one ``best_*`` metric)."""
    metric = record.tags.get("primary_metric")
    if metric is None:
        best = [m for m in record.metrics if m.startswith("best_")]
        metric = best[0][len("best_"):] if len(best) == 1 else None
    return metric if metric is not None and f"best_{metric}" in record.metrics else None


def _column(record: RunRecord, by: Sequence[str]) -> str:
    return " | ".join([record.params.get("teachers", LABELS_ONLY),
                       *(f"{p}={record.params.get(p, '-')}" for p in by)])


def _cell(runs: list[RunRecord], metric: str, by: Sequence[str]) -> Cell:
    runs = sorted(runs, key=lambda r: (r.params.get("seed", ""), r.run_id))
    keys = set().union(*(r.params for r in runs)) - _NOT_CHOICES - set(by)
    varying = tuple(sorted(k for k in keys if len({r.params.get(k) for r in runs}) > 1))
    return Cell(tuple(r.metrics[metric] for r in runs), tuple(r.run_id for r in runs),
                tuple(r.params.get("seed", "") for r in runs), varying)


def _row_key(row: StudentRow) -> tuple:
    return row.experiment, math.inf if row.params is None else row.params, row.student


def record_comparison(table: CompareTable, tracking_uri: str | None = None) -> str:
    """Log ``table`` as a run of the ``compare`` experiment (``teacher_choice.png`` and ``teacher_choice.json``);
    the run's id."""
    params = {"experiments": ",".join(table.experiments), "students": len(table.rows),
              "teacher_sets": ",".join(table.columns), "runs": table.runs}
    with tracked_run(COMPARE_EXPERIMENT, run_name=f"teacher choice: {', '.join(table.experiments)}", params=params,
                     tracking_uri=tracking_uri) as run:
        run.log_figure(comparison_figure(table), "teacher_choice.png")
        run.log_dict(table.to_dict(), "teacher_choice.json")
        return run.run_id


def plot_comparison(table: CompareTable, path: str | Path) -> Path:
    """Write the table's figure (a PNG) to ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise KdError(f"--plot {path}: the figure is written as a PNG; name it FILE.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    comparison_figure(table).savefig(path)
    return path


# --- the figure ----------------------------------------------------------------------------------------------------
def comparison_figure(table: CompareTable) -> Figure:
    """Students (rows) by teacher sets (columns): each cell's mean score over seeds, ± the standard deviation and the
    number of runs; colours rank the cells within a row (the best teacher choice per student is the darkest)."""
    rows, columns = table.rows, table.columns
    fig = new_figure(min(max(7.0, 2.5 + 1.9 * len(columns)), 20.0), 1.6 + 0.7 * len(rows))
    ax = fig.add_subplot()
    shade = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        means = {c: table.cell(row, c).mean for c in columns if table.cell(row, c)}
        low, high = min(means.values(), default=0.0), max(means.values(), default=0.0)
        for j, column in enumerate(columns):
            cell = table.cell(row, column)
            if cell is None:
                ax.text(j, i, "-", ha="center", va="center", fontsize=9, color=GREY)
                continue
            shade[i, j] = (cell.mean - low) / (high - low) if high > low else 1.0
            text = f"{cell.mean:.3f}" + (f"\n± {cell.std:.3f} (n={cell.n})" if cell.std is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if shade[i, j] > 0.6 else "black",
                    fontweight="bold" if cell.mean == high else "normal")
    ax.imshow(np.ma.masked_invalid(shade), cmap="Greens", vmin=-0.2, vmax=1.2, aspect="auto")
    ax.set_xticks(range(len(columns)), [_column_label(c) for c in columns], fontsize=9)
    ax.set_yticks(range(len(rows)), [f"{r.label}\n{r.metric}; {_cost(r)}" for r in rows], fontsize=9)
    ax.xaxis.tick_top()
    fig.suptitle(f"teacher choice: {', '.join(table.experiments)}\n(best {', '.join(sorted({r.metric for r in rows}))}: "
                 "mean ± std over seeds; bold: best per student)", fontsize=10)
    return fig


def _column_label(column: str) -> str:
    """``passt,ast | kd_lambda=0.5`` -> ``from passt,ast`` over ``kd_lambda=0.5``; ``none``: labels only."""
    teachers, *rest = column.split(" | ")
    return "\n".join(["labels only" if teachers == "none" else f"from {teachers}", *rest])


def _cost(row: StudentRow) -> str:
    parts = []
    if row.params is not None:
        parts.append(f"{row.params / 1e3:,.0f} K params")
    if row.macs is not None:
        parts.append(f"{row.macs / 1e6:,.1f} MMACs")
    return ", ".join(parts) or "cost unknown"
