"""The Task objects: one per task, what each caller asks of it, and that they survive a process boundary."""
import pickle

import numpy as np
import pytest
import torch

from kd.tasks import ASC, SED, TAGGING, TASKS, get_task
from teachers import TeacherOutput


def test_three_tasks_with_the_papers_defaults():
    assert set(TASKS) == {"asc", "tagging", "sed"}
    assert (ASC.kd_lambda, ASC.temperature, ASC.activation, ASC.primary_metric) == (0.02, 2.0, "softmax", "accuracy")
    assert (TAGGING.kd_lambda, TAGGING.temperature, TAGGING.activation) == (0.1, 1.0, "sigmoid")
    assert TAGGING.balanced_sampling and not ASC.balanced_sampling and not SED.balanced_sampling
    assert (SED.level, TAGGING.level, SED.primary_metric) == ("frame", "clip", "frame_mAP")


@pytest.mark.parametrize("task", list(TASKS.values()), ids=str)
def test_a_task_pickles_to_the_same_object(task):
    assert pickle.loads(pickle.dumps(task)) is task
    assert get_task(task.name) is task and get_task(task) is task


def test_logits_pick_frames_for_sed_and_clips_otherwise():
    out = TeacherOutput(torch.zeros(2, 3), torch.ones(2, 5, 3))
    assert SED.logits(out).shape == (2, 5, 3) and TAGGING.logits(out).shape == (2, 3)
    student_output = torch.randn(2, 3)
    assert ASC.logits(student_output) is student_output


def test_probabilities_follow_the_activation():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert torch.allclose(ASC.probabilities(logits).sum(-1), torch.ones(1))
    assert torch.allclose(TAGGING.probabilities(logits), logits.sigmoid())


def test_asc_metrics_are_accuracy_per_device(demo_asc):
    from kd.data import open_dataset

    data = open_dataset(demo_asc["spec"], split="eval")
    clips = data.clips[:6]
    logits = np.stack([data.targets(c) for c in clips]) * 5.0  # a perfect classifier
    logits[0] = np.roll(logits[0], 1)  # ... but for one clip
    out = ASC.metrics(data, clips, logits)
    assert out["accuracy"] == pytest.approx(5 / 6)
    assert {f"acc_{d}" for d in {c.device for c in clips}} <= set(out)
