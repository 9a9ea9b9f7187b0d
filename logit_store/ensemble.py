"""Ensemble views of the logit store: teacher weights and the weighted mean in logit or probability space."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

from logit_store.errors import StoreError

__all__ = ["ACTIVATIONS", "SPACES", "Activation", "Space", "check_view", "combine", "normalised_weights"]

Space = Literal["logit", "prob"]  # where an ensemble is averaged: logits, or probabilities (log-odds read back)
SPACES: tuple[Space, ...] = get_args(Space)
Activation = Literal["sigmoid", "softmax"]
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)


def check_view(space: Space, activation: Activation) -> None:
    """``StoreError`` unless ``space`` and ``activation`` name a supported ensemble view."""
    if space not in SPACES:
        raise StoreError(f"space must be 'logit' or 'prob', got {space!r}")
    if activation not in ACTIVATIONS:
        raise StoreError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")


def normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """``weights`` of ``n`` teachers scaled to sum 1 (equal when ``None``); ``StoreError`` if unusable."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise StoreError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    return w / w.sum()


def combine(parts: list[np.ndarray], w: np.ndarray, space: Space, activation: Activation) -> np.ndarray:
    """The weighted mean of the teachers' logits ``parts`` (weights ``w`` summing to 1), as float32 logits.

    ``space="logit"``: ``sum_i w_i z_i``. ``space="prob"``: the mixture of the teachers' probabilities mapped
    back to logits, computed in log space: ``logit(sum_i w_i sigmoid(z_i))`` for ``activation="sigmoid"``,
    ``log(sum_i w_i softmax(z_i))`` (over the last axis) for ``"softmax"``.
    """
    z = np.stack(parts).astype(np.float64)
    wb = w.reshape((-1,) + (1,) * (z.ndim - 1))
    if space == "logit":
        return (wb * z).sum(0).astype(np.float32)
    log_w = np.log(np.maximum(wb, 1e-300))
    if activation == "sigmoid":
        log_p = logsumexp(log_w - np.logaddexp(0, -z))  # log sigmoid(z) = -softplus(-z)
        log_q = logsumexp(log_w - np.logaddexp(0, z))
        return (log_p - log_q).astype(np.float32)
    log_softmax = z - logsumexp(z, axis=-1, keepdims=True)
    return logsumexp(log_w + log_softmax).astype(np.float32)


def logsumexp(x: np.ndarray, axis: int = 0, keepdims: bool = False) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)
