"""Losses against values computed by hand."""
import math

import pytest
import torch

from kd.losses import DistillLoss, hard_loss, soft_loss, soft_targets


def test_asc_hard_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert hard_loss("asc", logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_asc_soft_loss_is_t_squared_kl_per_class_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    temperature = 2.0
    p = [math.exp(0) / (1 + math.exp(1)), math.exp(1) / (1 + math.exp(1))]  # softmax([0, 1])
    q = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]  # softmax([0.5, 0])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = soft_loss("asc", s, soft_targets("asc", t, temperature), temperature)
    assert got.item() == pytest.approx(4.0 * kl / 2, rel=1e-5)  # T^2 * KL / C, C = 2 classes


def test_asc_soft_loss_is_zero_when_student_matches_teacher():
    t = torch.randn(5, 10)
    for temperature in (1.0, 3.0):
        assert soft_loss("asc", t, soft_targets("asc", t, temperature), temperature).item() == pytest.approx(
            0.0, abs=1e-6
        )


@pytest.mark.parametrize("task, shape", [("tagging", (2, 3)), ("sed", (2, 4, 3))])
def test_multilabel_soft_loss_is_bce_against_sigmoid_targets(task, shape):
    torch.manual_seed(0)
    s, t = torch.randn(shape), torch.randn(shape)
    p = torch.sigmoid(t / 2.0)
    by_hand = -(p * torch.log(torch.sigmoid(s)) + (1 - p) * torch.log(1 - torch.sigmoid(s))).mean()
    assert soft_loss(task, s, soft_targets(task, t, 2.0), 2.0).item() == pytest.approx(by_hand.item(), rel=1e-5)
    labels = (torch.rand(shape) > 0.5).float()
    by_hand = -(labels * torch.log(torch.sigmoid(s)) + (1 - labels) * torch.log(1 - torch.sigmoid(s))).mean()
    assert hard_loss(task, s, labels).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_kd_lambda_weights_the_label_loss():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    loss = DistillLoss("asc", kd_lambda=0.25, temperature=2.0)
    terms = loss(s, y, loss.targets(t))
    assert terms.total.item() == pytest.approx(0.25 * terms.hard.item() + 0.75 * terms.soft.item(), rel=1e-6)
    only_labels = DistillLoss("asc", kd_lambda=1.0)(s, y, loss.targets(t))
    assert only_labels.total.item() == pytest.approx(hard_loss("asc", s, y).item(), rel=1e-6)
    no_teacher = loss(s, y)
    assert no_teacher.soft is None and no_teacher.total.item() == pytest.approx(terms.hard.item())


def test_mixed_soft_targets_give_the_mixed_losses_gradient():
    """Mixing teacher probabilities equals mixing the two partners' losses (EfficientAT's formulation)."""
    torch.manual_seed(0)
    s = torch.randn(3, 6, requires_grad=True)
    p1, p2 = soft_targets("tagging", torch.randn(3, 6)), soft_targets("tagging", torch.randn(3, 6))
    lam = 0.7
    mixed = soft_loss("tagging", s, lam * p1 + (1 - lam) * p2)
    separate = lam * soft_loss("tagging", s, p1) + (1 - lam) * soft_loss("tagging", s, p2)
    assert mixed.item() == pytest.approx(separate.item(), rel=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kd_lambda"):
        DistillLoss("asc", kd_lambda=1.5)
    with pytest.raises(ValueError, match="unknown task"):
        DistillLoss("speech")
    with pytest.raises(ValueError, match="differ in shape"):
        hard_loss("tagging", torch.zeros(2, 3), torch.zeros(2, 4))
