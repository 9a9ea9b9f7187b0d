"""The pictures logged with every run: what a user should see of a run without reading its numbers.

* every training run (``kd distill``, ``kd train-teacher``), by what its task is scored on: a confusion matrix and the
  accuracy per recording device (single-label tasks), the best and worst classes by average precision (multi-label
  tasks), each class's PSDS (frame-level tasks), an event roll of one clip (frame-level tasks);
* distilled runs: how far the student follows its teachers (how often its top class is theirs, and how its
  probabilities compare with theirs);
* ``kd teach``: each teacher's quality on the taught labels and the store's bytes per logit.

``kd compare``'s heat map is drawn by :mod:`kd.track.compare` on :func:`new_figure`.

Figures are :class:`matplotlib.figure.Figure` objects drawn without pyplot (no global state, no GUI backend:
saving renders with Agg), small enough to read in MLflow's artifact view. Everything here takes NumPy arrays;
the task decides which figures apply (:func:`evaluation_figures`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.special import expit, softmax
from sklearn.metrics import average_precision_score

from kd.tasks import Task
from kd.tasks.metrics import class_psds, merge_overlapping

__all__ = [
    "GREY",
    "agreement_figure",
    "class_ap_figure",
    "class_psds_figure",
    "confusion_matrix_figure",
    "device_accuracy_figure",
    "evaluation_figures",
    "event_roll_figure",
    "new_figure",
    "probabilities",
    "store_bytes_figure",
    "teacher_quality_figure",
]

DPI = 100
SHOWN_CLASSES = 10  # best and worst classes in the AP and PSDS figures
ROLL_CLASSES = 12  # classes drawn in an event roll
CALIBRATION_BINS = 10
_BLUE, _ORANGE, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"


def probabilities(logits: np.ndarray, single_label: bool) -> np.ndarray:
    """Softmax over the last axis (single-label tasks) or independent sigmoids."""
    x = np.asarray(logits, np.float64)
    return softmax(x, axis=-1) if single_label else expit(x)


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# --- what a run is scored on ---------------------------------------------------------------------------------------
def evaluation_figures(task: Task, data: Any, clips: Sequence[Any], logits: np.ndarray,
                       frames_per_second: float | None = None) -> dict[str, Figure]:
    """The figures of a model's eval ``logits`` (``[N, C]``, or ``[N, T, C]`` at ``frames_per_second``) on ``clips``
    of ``data``, by file name: what the task is scored on, drawn per class or per device."""
    figures: dict[str, Figure] = {}
    if task.single_label:
        labels = np.array([c.labels[0] for c in clips])
        predicted = np.asarray(logits).argmax(axis=-1)
        figures["confusion_matrix.png"] = confusion_matrix_figure(labels, predicted, data.classes)
        devices = [c.device or "" for c in clips]
        if any(devices):
            figures["device_accuracy.png"] = device_accuracy_figure(predicted == labels, devices, data.seen_devices)
        return figures
    probs = probabilities(logits, single_label=False)
    if task.frame_level:
        targets = np.stack([data.frame_targets(c, frames_per_second, probs.shape[1]) for c in clips])
        figures["class_ap.png"] = class_ap_figure(probs, targets, data.classes, what="frame AP")
        truth = {c.id: merge_overlapping([(e.onset, e.offset, data.classes[e.label]) for e in c.events]) for c in clips}
        durations = {c.id: c.duration or probs.shape[1] / frames_per_second for c in clips}
        per_class = class_psds({c.id: p for c, p in zip(clips, probs)}, frames_per_second, truth, durations,
                               data.classes)
        figures["class_psds.png"] = class_psds_figure(per_class)
    else:
        targets = np.stack([data.targets(c) for c in clips])
        figures["class_ap.png"] = class_ap_figure(probs, targets, data.classes)
    return figures


def confusion_matrix_figure(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> Figure:
    """Rows: the true class; columns: the predicted one; each row as fractions of its clips (recall on the diagonal)."""
    n = len(classes)
    counts = np.zeros((n, n), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = min(4.0 + 0.45 * n, 14.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class's clips")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{share[i, j]:.0%}".replace("%", ""), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ticks = np.arange(n)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [f"{c} ({r})" for c, r in zip(classes, rows[:, 0])], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (clips)")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix (percent of each row): accuracy {accuracy:.3f} on {counts.sum()} clips",
                 fontsize=10)
    return fig


def device_accuracy_figure(correct: np.ndarray, devices: Sequence[str],
                           seen_devices: Sequence[str] | None = None) -> Figure:
    """Accuracy per recording device, devices unseen in training drawn apart; the overall accuracy as a line."""
    correct, devices = np.asarray(correct, bool), np.asarray(devices)
    names = sorted(set(devices.tolist()))
    accuracy = [float(correct[devices == d].mean()) for d in names]
    counts = [int((devices == d).sum()) for d in names]
    seen = set(seen_devices) if seen_devices is not None else set(names)
    fig = new_figure(max(5.0, 0.6 * len(names) + 2.5), 3.8)
    ax = fig.add_subplot()
    colours = [_BLUE if d in seen else _ORANGE for d in names]
    bars = ax.bar(range(len(names)), accuracy, color=colours)
    ax.bar_label(bars, [f"{a:.2f}" for a in accuracy], fontsize=8, padding=2)
    ax.axhline(correct.mean(), color=GREY, linestyle="--", linewidth=1)
    ax.text(len(names) - 0.5, correct.mean(), f"all {correct.mean():.3f}", ha="right", va="bottom", fontsize=8,
            color=GREY)
    ax.set_xticks(range(len(names)), [f"{d or '?'}\n{n}" for d, n in zip(names, counts)], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("device (eval clips)")
    unseen = [d for d in names if d not in seen]
    ax.set_title("accuracy per device" + (f" (orange: unseen in training: {', '.join(unseen)})" if unseen else ""),
                 fontsize=10)
    return fig


def class_ap_figure(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str], *, what: str = "AP",
                    shown: int = SHOWN_CLASSES) -> Figure:
    """Average precision per class (classes with a positive example): the ``shown`` best and worst ones."""
    s = np.asarray(scores, np.float64).reshape(-1, len(classes))
    t = np.asarray(targets).reshape(-1, len(classes)) > 0.5
    present = np.flatnonzero(t.any(axis=0))
    ap = np.array([average_precision_score(t[:, c], s[:, c]) for c in present])
    order = np.argsort(-ap)
    if len(order) > 2 * shown:
        order = np.concatenate([order[:shown], order[-shown:]])
    fig = new_figure(7.0, max(2.5, 0.28 * len(order) + 1.4))
    ax = fig.add_subplot()
    y = np.arange(len(order))
    colours = [_BLUE if i < shown or len(present) <= 2 * shown else _ORANGE for i in range(len(order))]
    ax.barh(y, ap[order], color=colours)
    ax.set_yticks(y, [f"{classes[present[k]]} ({int(t[:, present[k]].sum())})" for k in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{what} (positives)")
    mean = float(ap.mean()) if len(ap) else math.nan
    ax.axvline(mean, color=GREY, linestyle="--", linewidth=1)
    split = f": best {shown} (blue) and worst {shown} (orange) of {len(present)}" if len(present) > 2 * shown else ""
    ax.set_title(f"{what} per class{split}; mean {mean:.3f}", fontsize=10)
    return fig


def class_psds_figure(per_class: Mapping[str, Mapping[str, float]], shown: int = SHOWN_CLASSES) -> Figure:
    """Each class's PSDS1 and PSDS2 (the area under its own ROC): the classes that carry the score and hold it down."""
    settings = list(per_class)
    first = per_class[settings[0]]
    names = sorted(first, key=lambda c: -first[c])
    if len(names) > 2 * shown:
        names = names[:shown] + names[-shown:]
    fig = new_figure(7.0, max(2.5, 0.3 * len(names) + 1.4))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    height = 0.8 / len(settings)
    for k, (setting, colour) in enumerate(zip(settings, (_BLUE, _ORANGE, GREY))):
        values = [per_class[setting].get(c, 0.0) for c in names]
        ax.barh(y + (k - (len(settings) - 1) / 2) * height, values, height, color=colour,
                label=f"{setting} (class mean {np.mean(list(per_class[setting].values())):.3f})")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("single-class PSDS")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("PSDS per class" + (f" (best and worst {shown})" if len(first) > 2 * shown else ""), fontsize=10)
    return fig


def event_roll_figure(rows: Mapping[str, np.ndarray], classes: Sequence[str], frames_per_second: float,
                      title: str) -> Figure:
    """One clip's frames ``[T, C]`` per row (targets, teacher, student probabilities) over time, for the classes
    active in any row (at most ``ROLL_CLASSES``, the most active first)."""
    arrays = {name: np.asarray(a, np.float64) for name, a in rows.items()}
    activity = np.max([a.max(axis=0) for a in arrays.values()], axis=0)
    keep = np.argsort(-activity)[:ROLL_CLASSES]
    keep = np.sort(keep[activity[keep] > 0.05]) if (activity[keep] > 0.05).any() else np.sort(keep[:3])
    fig = new_figure(8.0, 0.6 + len(arrays) * (0.22 * len(keep) + 0.5))
    axes = fig.subplots(len(arrays), 1, sharex=True, squeeze=False)[:, 0]
    image = None
    for ax, (name, a) in zip(axes, arrays.items()):
        seconds = a.shape[0] / frames_per_second
        image = ax.imshow(a[:, keep].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                          extent=(0, seconds, len(keep) - 0.5, -0.5))
        ax.set_yticks(range(len(keep)), [classes[k] for k in keep], fontsize=7)
        ax.set_ylabel(name, fontsize=9)
    axes[-1].set_xlabel("seconds")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="probability / label")
    fig.suptitle(title, fontsize=10)
    return fig


# --- teacher and student -------------------------------------------------------------------------------------------
def agreement_figure(student_logits: np.ndarray, teacher_logits: np.ndarray, classes: Sequence[str], *,
                     single_label: bool, where: str) -> Figure:
    """How far the student follows its teachers on the same inputs (clips, or frames for frame-level logits).

    Left: for the inputs on which the teachers' top class is ``c``, how often the student's top class is ``c`` too
    (the overall rate in the title). Right: the student's probabilities binned against the teachers' mean
    probability in each bin (on the diagonal: the student is as confident as its teachers).
    """
    num_classes = len(classes)
    student = probabilities(student_logits, single_label).reshape(-1, num_classes)
    teacher = probabilities(teacher_logits, single_label).reshape(-1, num_classes)
    top_s, top_t = student.argmax(axis=1), teacher.argmax(axis=1)
    agree = top_s == top_t
    fig = new_figure(10.0, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=(1.4, 1))
    shown = [c for c in range(num_classes) if (top_t == c).any()]
    if len(shown) > 2 * SHOWN_CLASSES:  # many classes: the most frequent teacher top classes
        shown = sorted(shown, key=lambda c: -(top_t == c).sum())[:2 * SHOWN_CLASSES]
    rates = [float(agree[top_t == c].mean()) for c in shown]
    bars = left.bar(range(len(shown)), rates, color=_BLUE)
    left.bar_label(bars, [f"{r:.2f}" for r in rates], fontsize=7, padding=1)
    left.set_xticks(range(len(shown)), [f"{classes[c]} ({int((top_t == c).sum())})" for c in shown], rotation=60,
                    ha="right", fontsize=7)
    left.set_ylim(0, 1.1)
    left.set_ylabel("student's top class = teachers'")
    left.set_title(f"top-class agreement {agree.mean():.3f} on {len(agree)} {where}", fontsize=10)
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    bins = np.clip(np.digitize(student.ravel(), edges) - 1, 0, CALIBRATION_BINS - 1)
    filled = [b for b in range(CALIBRATION_BINS) if (bins == b).any()]
    centres = [float(student.ravel()[bins == b].mean()) for b in filled]
    teacher_mean = [float(teacher.ravel()[bins == b].mean()) for b in filled]
    right.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1)
    right.plot(centres, teacher_mean, marker="o", color=_ORANGE)
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("student probability (binned)")
    right.set_ylabel("teachers' mean probability")
    right.set_title("calibration against the teachers", fontsize=10)
    return fig


def teacher_quality_figure(metrics: Mapping[str, Mapping[str, float]], primary: str) -> Figure:
    """Each teacher's (and the ensemble's) metrics on the taught split's labels, the task's primary metric first."""
    teachers = list(metrics)
    names = sorted({k for m in metrics.values() for k in m}, key=lambda k: (k != primary, k))
    fig = new_figure(min(max(5.0, 0.3 * len(names) * len(teachers) + 3.0), 12.0), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(teachers), 1)
    x = np.arange(len(names))
    for k, teacher in enumerate(teachers):
        values = [metrics[teacher].get(n, math.nan) for n in names]
        bars = ax.bar(x + (k - (len(teachers) - 1) / 2) * width, values, width, label=teacher)
        if len(names) * len(teachers) <= 24:
            ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                  fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, ncols=min(len(teachers), 4), loc="upper right")
    best = max(teachers, key=lambda t: metrics[t].get(primary, -math.inf))
    ax.set_title(f"teachers on the taught split's labels: best {primary} {best} "
                 f"({metrics[best].get(primary, math.nan):.3f})", fontsize=10)
    return fig


def store_bytes_figure(info: Mapping[str, Any]) -> Figure:
    """Bytes per stored logit of each teacher (its codec in the label), next to float32 and float16."""
    teachers = {n: t for n, t in info.get("teachers", {}).items() if t.get("bytes_per_logit")}
    names = list(teachers)
    values = [teachers[n]["bytes_per_logit"] for n in names]
    fig = new_figure(max(4.5, 0.9 * len(names) + 2.5), 3.6)
    ax = fig.add_subplot()
    labels = [f"{n}\n{t['codec']}" + (f"+{t['frame_codec']}" if t.get("frame_codec") else "")
              for n, t in teachers.items()]
    bars = ax.bar(range(len(names)), values, color=_BLUE, width=0.6)
    ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=8, padding=2)
    for (level, bytes_), style in zip((("float32", 4.0), ("float16", 2.0)), ("--", ":")):
        ax.axhline(bytes_, color=GREY, linestyle=style, linewidth=1, label=f"{level}: {bytes_:g} bytes")
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    ax.set_ylim(0, max(5.0, 1.25 * max(values, default=0.0)))
    ax.set_ylabel("bytes per logit")
    total = info.get("bytes_per_logit")
    ax.set_title(f"store: {info.get('clips', '?')} clips, {info.get('num_views', 1)} view(s)"
                 + (f", {total:.2f} bytes per logit overall" if total else ""), fontsize=10)
    return fig
