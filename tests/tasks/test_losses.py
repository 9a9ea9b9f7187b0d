"""Losses against values computed by hand, reached through the tasks that choose them."""
import math

import pytest
import torch

from kd.tasks import ASC, SED, TAGGING, get_task
from kd.train.loss import DistillLoss
from kd_errors import KdError


def test_asc_hard_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert ASC.hard_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_asc_soft_loss_is_t_squared_kl_per_class_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    temperature = 2.0
    p = [math.exp(0) / (1 + math.exp(1)), math.exp(1) / (1 + math.exp(1))]  # softmax([0, 1])
    q = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax([0.5, 0])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = ASC.soft_loss(s, ASC.soft_targets(t, temperature), temperature)
    assert got.item() == pytest.approx(4.0 * kl / 2, rel=1e-5)  # T^2 * KL / C, C = 2 classes


def test_asc_soft_loss_is_zero_when_student_matches_teacher():
    t = torch.randn(5, 10)
    for temperature in (1.0, 3.0):
        assert ASC.soft_loss(t, ASC.soft_targets(t, temperature), temperature).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("task, shape", [(TAGGING, (2, 3)), (SED, (2, 4, 3))])
def test_multilabel_soft_loss_is_bce_against_sigmoid_targets(task, shape):
    torch.manual_seed(0)
    s, t = torch.randn(shape), torch.randn(shape)
    p = torch.sigmoid(t / 2.0)
    by_hand = -(p * torch.log(torch.sigmoid(s)) + (1 - p) * torch.log(1 - torch.sigmoid(s))).mean()
    assert task.soft_loss(s, task.soft_targets(t, 2.0), 2.0).item() == pytest.approx(by_hand.item(), rel=1e-5)
    labels = (torch.rand(shape) > 0.5).float()
    by_hand = -(labels * torch.log(torch.sigmoid(s)) + (1 - labels) * torch.log(1 - torch.sigmoid(s))).mean()
    assert task.hard_loss(s, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_kd_lambda_weights_the_label_loss():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    loss = DistillLoss(ASC, kd_lambda=0.25, temperature=2.0)
    terms = loss(s, y, loss.targets(t))
    assert terms.total.item() == pytest.approx(0.25 * terms.hard.item() + 0.75 * terms.soft.item(), rel=1e-6)
    only_labels = DistillLoss(ASC, kd_lambda=1.0)(s, y, loss.targets(t))
    assert only_labels.total.item() == pytest.approx(ASC.hard_loss(s, y).item(), rel=1e-6)
    no_teacher = loss(s, y)
    assert no_teacher.soft is None and no_teacher.total.item() == pytest.approx(terms.hard.item())


@pytest.mark.parametrize("task,shape", [(ASC, (4, 10)), (TAGGING, (4, 30)), (SED, (2, 25, 5))])
def test_logit_matching_is_the_mean_squared_logit_difference_at_any_temperature(task, shape):
    torch.manual_seed(0)
    s, t = torch.randn(shape), 3 * torch.randn(shape)
    for temperature in (1.0, 4.0):
        loss = DistillLoss(task, kd_lambda=0.0, temperature=temperature, soft_loss="logits")
        assert torch.equal(loss.targets(t), t)  # what mixup mixes: the logits themselves
        assert loss(s, torch.zeros(shape), loss.targets(t)).total.item() == pytest.approx(
            ((s - t) ** 2).mean().item(), rel=1e-6)


def test_mixed_soft_targets_give_the_mixed_losses_gradient():
    """Mixing teacher probabilities equals mixing the two partners' losses (EfficientAT's formulation)."""
    torch.manual_seed(0)
    s = torch.randn(3, 6, requires_grad=True)
    p1, p2 = TAGGING.soft_targets(torch.randn(3, 6), 1.0), TAGGING.soft_targets(torch.randn(3, 6), 1.0)
    lam = 0.7
    mixed = TAGGING.soft_loss(s, lam * p1 + (1 - lam) * p2, 1.0)
    separate = lam * TAGGING.soft_loss(s, p1, 1.0) + (1 - lam) * TAGGING.soft_loss(s, p2, 1.0)
    assert mixed.item() == pytest.approx(separate.item(), rel=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(KdError, match="kd_lambda"):
        DistillLoss(ASC, kd_lambda=1.5)
    with pytest.raises(KdError, match="--soft-loss must be one of probs, logits"):
        DistillLoss(ASC, soft_loss="mse")
    with pytest.raises(KdError, match="unknown task"):
        get_task("speech")
    with pytest.raises(ValueError, match="differ in shape"):
        TAGGING.hard_loss(torch.zeros(2, 3), torch.zeros(2, 4))
