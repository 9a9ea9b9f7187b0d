"""Hard-label and distillation losses, and their weighting.

The total loss of a distillation step is ``kd_lambda * hard + (1 - kd_lambda) * soft``, the weighting of
EfficientAT (Schmid et al., ICASSP 2023) and of the CP-JKU DCASE'23 system (Schmid et al., "Creating a
Good Teacher for Knowledge Distillation in Acoustic Scene Classification", 2023): ``kd_lambda`` weights the
**label** loss. Soft targets are probabilities derived from the stored teacher logits
(:meth:`kd.tasks.Task.soft_targets`), so that batch mixing (mixup) can mix them linearly with the same
coefficient as the inputs. Which loss a task uses is the task's choice (:class:`kd.tasks.Task`):

* single-label (``asc``): cross-entropy against (mixed) one-hot labels; soft loss
  ``T^2 * KL(p || softmax(s / T)) / C`` with ``p = softmax(t / T)``: the KL terms averaged over clips *and*
  the ``C`` classes, as CP-JKU's DCASE'23 training computes it (``KLDivLoss(reduction="none")(...).mean()``),
  so that its ``kd_lambda = 0.02``, ``T = 2`` keep their balance here (Hinton et al., 2015, for the ``T^2``,
  which keeps gradient magnitudes comparable across temperatures).
* multi-label (``tagging``, and ``sed`` over frames ``[B, T, C]``): BCE against the labels, and BCE against
  ``p = sigmoid(t / T)`` averaged over classes (and frames) and clips, as EfficientAT distils PaSST ensembles.

Transfer clips (clips without labels, ``kd distill --transfer``) take the soft loss only: the label loss
averages over the batch's labelled clips, the soft loss over all its clips. ``kd_lambda`` so keeps its meaning
(the weight of the label term against the teacher term, per clip that has each), and a larger share of
transfer clips adds teacher signal without diluting the label loss.

Logit matching (``kd distill --soft-loss logits``), for every task: the mean squared error between the student's
and the teacher's logits, which Kim et al. ("Comparing Kullback-Leibler Divergence and Mean Squared Error Loss
in Knowledge Distillation", IJCAI 2021) found to transfer more than KL. It reads every logit, so it needs stores
that keep them all (not ``topk``), and mixup mixes the teacher's logits themselves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["binary_cross_entropy", "logit_mse", "soft_cross_entropy", "tempered_kl"]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` ``[B, C]`` against label distributions (one-hot or mixed), averaged over clips."""
    _check_shapes(logits, targets)
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=-1).mean()


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE of independent classes, averaged over every entry (clips, frames, classes)."""
    _check_shapes(logits, targets)
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def tempered_kl(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(targets || softmax(logits / T))``, averaged over clips and classes (see the module doc)."""
    _check_shapes(logits, targets)
    log_q = (logits.float() / temperature).log_softmax(dim=-1)
    kl = torch.xlogy(targets, targets) - targets * log_q
    return kl.mean() * temperature**2


def logit_mse(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher logits (clip ``[B, C]`` or frame ``[B, T, C]``)."""
    _check_shapes(logits, teacher_logits)
    return F.mse_loss(logits.float(), teacher_logits.float())


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
