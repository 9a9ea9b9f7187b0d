"""Metrics against hand-computed values and against their defining properties."""
import numpy as np
import pytest

from kd.tasks.metrics import (
    UndefinedMetric,
    accuracy,
    asc_metrics,
    frame_map,
    mean_average_precision,
    merge_overlapping,
    psds,
    sed_metrics,
)


def test_map_by_hand():
    # class 0: ranking [0.9 (+), 0.8 (-), 0.1 (+)] -> AP = (1/1 + 2/3) / 2; class 1: perfect -> 1; class 2: no positive.
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.9, 0.5], [0.1, 0.1, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_map_without_positives_is_an_error():
    with pytest.raises(UndefinedMetric, match="no class has a positive"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))


def test_asc_accuracy_per_device_and_seen_unseen():
    logits = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    labels = np.array([0, 1, 0, 0, 2, 2])
    devices = ["a", "a", "b", "s4", "s4", "s5"]
    m = asc_metrics(logits, labels, devices, seen_devices=["a", "b"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["acc_a"] == 1.0 and m["acc_b"] == 0.0 and m["acc_s4"] == 0.5 and m["acc_s5"] == 1.0
    assert m["acc_seen"] == pytest.approx(2 / 3) and m["acc_unseen"] == pytest.approx(2 / 3)
    assert accuracy(logits, labels) == m["accuracy"]


def test_frame_map_flattens_frames():
    targets = np.zeros((2, 4, 2))
    targets[0, 1:3, 0] = 1
    targets[1, :, 1] = 1
    assert frame_map(targets * 0.9 + 0.05, targets) == pytest.approx(1.0)


def _clip_scores(events, fps=10, seconds=10.0, classes=("dog", "bell"), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    s = np.full((int(seconds * fps), len(classes)), 0.01) + noise * rng.random((int(seconds * fps), len(classes)))
    for onset, offset, name in events:
        s[int(onset * fps):int(offset * fps), classes.index(name)] = 0.99
    return s


def test_psds_is_high_for_perfect_scores_and_psds1_low_for_misplaced_ones():
    """PSDS2's lenient 0.1 criteria accept a whole-clip detection at the lowest threshold, so only PSDS1 drops."""
    truth = {f"c{i}": [(1.0 + i % 3, 3.0 + i % 3, "dog"), (5.0, 8.0, "bell")] for i in range(6)}
    durations = {k: 10.0 for k in truth}
    perfect = {k: _clip_scores(v) for k, v in truth.items()}
    wrong = {k: _clip_scores([(6.0, 9.0, "dog"), (0.0, 2.0, "bell")]) for k in truth}
    good = psds(perfect, 10, truth, durations, ["dog", "bell"])
    bad = psds(wrong, 10, truth, durations, ["dog", "bell"])
    assert good["psds1"] > 0.9 and good["psds2"] > 0.9
    assert bad["psds1"] < 0.1


def test_overlapping_events_of_one_class_merge_and_other_classes_stay_apart():
    events = [(3.0, 5.0, "dog"), (1.0, 2.0, "dog"), (2.0, 2.5, "dog"), (4.5, 6.0, "dog"), (1.5, 7.0, "bell")]
    assert merge_overlapping(events) == [(1.5, 7.0, "bell"), (1.0, 2.5, "dog"), (3.0, 6.0, "dog")]
    assert merge_overlapping([]) == []


def test_sed_metrics_score_strong_labels_at_the_frame_rate(demo_sed):
    """Frame mAP and PSDS of the labels themselves (a perfect detector), and of their time-reversal."""
    from kd.data import open_dataset

    data = open_dataset(demo_sed["spec"], split="eval")
    clips, fps = data.clips, 10.0
    frames = int(demo_sed["seconds"] * fps)
    truth = np.stack([data.frame_targets(c, fps, frames) for c in clips])
    perfect = sed_metrics(data, clips, truth * 0.98 + 0.01, fps)
    assert perfect["frame_mAP"] == pytest.approx(1.0) and perfect["psds1"] > 0.8
    reversed_ = sed_metrics(data, clips, truth[:, ::-1] * 0.98 + 0.01, fps)
    assert reversed_["frame_mAP"] < 0.8 and reversed_["psds1"] < perfect["psds1"]
