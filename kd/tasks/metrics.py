"""Evaluation metrics of the three tasks: mAP (tagging), accuracy per device (ASC), PSDS and frame mAP (SED).

PSDS follows the DCASE 2021-2023 Task 4 operating points, computed threshold-independently from score
arrays with ``sed_scores_eval`` (Ebbers et al., "Threshold-Independent Evaluation of Sound Event Detection
Scores", ICASSP 2022):

* PSDS1: DTC = GTC = 0.7, no cross-trigger penalty (alpha_ct = 0), alpha_st = 1, max eFPR 100 per hour.
* PSDS2: DTC = GTC = 0.1, CTTC = 0.3, alpha_ct = 0.5, alpha_st = 1, max eFPR 100 per hour.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kd_errors import KdError

__all__ = [
    "UndefinedMetric",
    "accuracy",
    "asc_metrics",
    "class_psds",
    "frame_map",
    "mean_average_precision",
    "merge_overlapping",
    "psds",
    "sed_metrics",
    "tagging_metrics",
]

PSDS_SETTINGS = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0, "alpha_st": 1.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0},
}


class UndefinedMetric(KdError):
    """The labels leave a metric undefined (e.g. mAP of clips without a single positive label)."""


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of per-class average precision over the classes that have a positive example.

    Classes without positives have no defined AP and are left out, as AudioSet evaluations do.
    ``scores`` and ``targets`` are ``[N, C]`` (or ``[N, T, C]``, flattened to frames).
    """
    from sklearn.metrics import average_precision_score  # 1-2 s to import: not in every kd teach worker

    scores, targets = _as_2d(scores), _as_2d(targets) > 0.5
    present = targets.any(axis=0)
    if not present.any():
        raise UndefinedMetric("no class has a positive example: mAP is undefined")
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1])


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).mean())


def tagging_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {"mAP": mean_average_precision(scores, targets)}


def asc_metrics(
    logits: np.ndarray, labels: np.ndarray, devices: Sequence[str] | None = None,
    seen_devices: Sequence[str] | None = None,
) -> dict[str, float]:
    """Overall accuracy, accuracy per device and, given the training devices, over seen and unseen ones."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    correct = logits.argmax(axis=-1) == labels
    out = {"accuracy": float(correct.mean())}
    if devices is None:
        return out
    devices = np.asarray(devices)
    for device in sorted(set(devices.tolist())):
        out[f"acc_{device}"] = float(correct[devices == device].mean())
    if seen_devices is not None:
        seen = np.isin(devices, list(seen_devices))
        if seen.any():
            out["acc_seen"] = float(correct[seen].mean())
        if (~seen).any():
            out["acc_unseen"] = float(correct[~seen].mean())
    return out


def frame_map(frame_scores: np.ndarray, frame_targets: np.ndarray) -> float:
    """mAP over all frames of all clips (``[N, T, C]`` scores and 0/1 targets)."""
    return mean_average_precision(frame_scores, frame_targets)


def psds(
    frame_scores: Mapping[str, np.ndarray],
    frames_per_second: float,
    ground_truth: Mapping[str, Sequence[tuple[float, float, str]]],
    durations: Mapping[str, float],
    classes: Sequence[str],
) -> dict[str, float]:
    """PSDS1 and PSDS2 from per-clip frame probabilities ``[T, C]``.

    Args:
        frame_scores: clip id -> frame probabilities; frame ``i`` covers ``[i, i + 1) / frames_per_second``.
        ground_truth: clip id -> events ``(onset, offset, class name)``.
        durations: clip id -> length in seconds.
    """
    return {name: value for name, (value, _) in
            _psds(frame_scores, frames_per_second, ground_truth, durations, classes).items()}


def class_psds(
    frame_scores: Mapping[str, np.ndarray],
    frames_per_second: float,
    ground_truth: Mapping[str, Sequence[tuple[float, float, str]]],
    durations: Mapping[str, float],
    classes: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Each class's own PSDS1 and PSDS2 (its single-class ROC's area), as :func:`psds` takes its arguments."""
    return {name: per_class for name, (_, per_class) in
            _psds(frame_scores, frames_per_second, ground_truth, durations, classes).items()}


def _psds(frame_scores, frames_per_second, ground_truth, durations, classes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sed_eval/dcase_util import-time deprecation noise
        from sed_scores_eval import intersection_based
        from sed_scores_eval.base_modules.scores import create_score_dataframe

    scores = {}
    for clip_id, s in frame_scores.items():
        timestamps = np.arange(len(s) + 1) / frames_per_second
        scores[clip_id] = create_score_dataframe(np.asarray(s, dtype=np.float64), timestamps, list(classes))
    truth = {clip_id: list(ground_truth.get(clip_id, [])) for clip_id in scores}
    durations = {clip_id: float(durations[clip_id]) for clip_id in scores}
    out = {}
    for name, setting in PSDS_SETTINGS.items():
        value, per_class, *_ = intersection_based.psds(
            scores=scores, ground_truth=truth, audio_durations=durations, unit_of_time="hour", max_efpr=100.0,
            **setting,
        )
        out[name] = (float(value), {str(c): float(v) for c, v in per_class.items()})
    return out


def sed_metrics(data: Any, clips: Sequence[Any], probs: np.ndarray, frames_per_second: float) -> dict[str, float]:
    """Frame mAP, PSDS1 and PSDS2 of frame probabilities ``[N, T, C]`` against the clips' strong labels."""
    targets = np.stack([data.frame_targets(c, frames_per_second, probs.shape[1]) for c in clips])
    out = {"frame_mAP": frame_map(probs, targets)}
    truth = {c.id: merge_overlapping([(e.onset, e.offset, data.classes[e.label]) for e in c.events]) for c in clips}
    durations = {c.id: c.duration or probs.shape[1] / frames_per_second for c in clips}
    out.update(psds({c.id: p for c, p in zip(clips, probs)}, frames_per_second, truth, durations, data.classes))
    return out


def merge_overlapping(events: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Join overlapping or touching events of one class (PSDS counts each ground-truth event once)."""
    merged: list[tuple[float, float, str]] = []
    for onset, offset, name in sorted(events, key=lambda e: (e[2], e[0])):
        if merged and merged[-1][2] == name and onset <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], offset), name)
        else:
            merged.append((onset, offset, name))
    return merged
