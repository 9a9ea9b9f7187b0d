"""The shortest waveform a model accepts, found by running it on silence.

A frontend turns ``N`` samples into frames (an STFT also needs more samples than half its FFT to reflect-pad,
a Kaldi fbank one whole frame), and a network's convolutions, pooling and patches only shrink the time axis, so
the lengths a model accepts are all lengths from some ``N`` on. Which ``N`` depends on the whole stack (CP-ResNet's
pooling needs 17 frames, PaSST one 16-frame patch, MobileNets a single frame), so it is measured rather than
derived: a doubling search finds an accepted length, a bisection between it and the last refused one the
shortest. Every probe is one forward of a silent ``[1, n]`` batch no longer than twice the answer, so the search
costs a few milliseconds for the models kd ships.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from kd_errors import KdError

__all__ = ["PROBE_LIMIT_SECONDS", "REFUSALS", "min_input_samples", "shortest_input"]

PROBE_LIMIT_SECONDS = 60  # a model that takes no input up to a minute long is broken, not picky

# What a model raises on an input too short for it: torch's shape checks (RuntimeError: pooling, padding, conv
# kernels larger than the input), a frontend's own checks (ValueError) and kd's (KdError: TeacherInputError).
REFUSALS = (RuntimeError, ValueError, IndexError, KdError)


def min_input_samples(model: nn.Module) -> int:
    """:func:`shortest_input` of a model with a ``sample_rate``, up to :data:`PROBE_LIMIT_SECONDS`, measured on the
    first call and kept on the model (the teachers' and students' ``min_input_samples``)."""
    if "_min_input_samples" not in model.__dict__:
        model._min_input_samples = shortest_input(model, limit=PROBE_LIMIT_SECONDS * model.sample_rate)
    return model._min_input_samples


def shortest_input(model: nn.Module, limit: int) -> int:
    """The fewest samples of a waveform batch ``[1, N]`` that ``model`` (in eval mode, on its own device) turns
    into an output.

    Raises:
        The model's own error at ``limit`` samples when it accepts no input up to there: a broken model, not a
        length problem.
    """
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _search(lambda n: model(torch.zeros(1, n, device=device)), limit)
    finally:
        model.train(training)


def _search(run, limit: int) -> int:
    def accepts(n: int) -> bool:
        try:
            run(n)
        except REFUSALS:
            return False
        return True

    refused, candidate = 0, 1
    while not accepts(candidate):
        if candidate >= limit:
            try:
                run(candidate)
            except REFUSALS as e:  # the model's own error, with its traceback
                e.add_note(f"the model takes no input of up to {limit} samples: it is broken, not picky")
                raise
        refused, candidate = candidate, min(2 * candidate, limit)
    while candidate - refused > 1:
        middle = (refused + candidate) // 2
        refused, candidate = (refused, middle) if accepts(middle) else (middle, candidate)
    return candidate
