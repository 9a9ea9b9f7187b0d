"""A model over a recording of any length, in bounded memory: windows of the model's training length with a hop.

The audio arrives in blocks (:class:`kd.data.AudioStream`), :func:`sliding_windows` cuts windows of ``window``
samples every ``hop`` samples from them (the first starts at 0, the last is the first that reaches the file's end,
zero-padded past it), and batches of windows go through the model. Clip models answer with a **timeline**, a row
per window (:func:`clip_timeline`); frame-wise models with **events** over the whole file (:func:`frame_events`):
the frame probabilities of overlapping windows are averaged on one frame grid, and frames become final, and pass
to the event tracker, as soon as no later window covers them, so an event that crosses a window boundary comes
out once. Nothing here keeps more than a window, a batch and the frames not yet final.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kd.tasks import Task
from kd_errors import KdError

__all__ = ["EventTracker", "FrameGrid", "TimelineRow", "Windowing", "clip_timeline", "each_window", "final_frames",
           "frame_events", "probabilities", "sliding_windows", "window_frames", "windows_per_batch"]


@dataclass(frozen=True)
class Windowing:
    """Window and hop in samples at ``sample_rate``; for frame-wise models the hop is a whole number of frames."""

    window: int
    hop: int
    sample_rate: int

    @classmethod
    def for_model(cls, sample_rate: int, model_seconds: float, frames_per_second: float | None,
                  window: float | None = None, hop: float | None = None) -> Windowing:
        """The windowing of a model trained on ``model_seconds`` clips: ``window`` seconds (default: that length)
        every ``hop`` seconds (default: the window for clip models, half of it for frame-wise models, whose frames
        near a window's edges see less context).

        Raises:
            KdError: a window or hop that is not positive, or a hop longer than the window (audio would be skipped).
        """
        window = model_seconds if window is None else window
        if hop is None:
            hop = window if frames_per_second is None else window / 2
        if window <= 0 or hop <= 0 or hop > window:
            raise KdError(f"--window {window:g} s, --hop {hop:g} s: both must be positive and the hop at most the "
                          "window (a longer hop skips audio)")
        hop_samples = round(hop * sample_rate)
        if frames_per_second:
            frame = sample_rate / frames_per_second
            hop_samples = max(1, round(hop_samples / frame)) * frame
            if abs(hop_samples - round(hop_samples)) > 1e-6:
                raise KdError(f"{frames_per_second:g} frames/s at {sample_rate} Hz is no whole number of samples per "
                              "frame: windows cannot share one frame grid")
        return cls(round(window * sample_rate), min(round(hop_samples), round(window * sample_rate)), sample_rate)


BATCH_AUDIO_SECONDS = 20.0  # audio per batch at most: each 10 s window through mn10 takes ~70 MB of activations


def windows_per_batch(windowing: Windowing, batch_size: int) -> int:
    """At most ``batch_size`` windows, and at most :data:`BATCH_AUDIO_SECONDS` of audio, per batch (at least one)."""
    return max(1, min(batch_size, int(BATCH_AUDIO_SECONDS * windowing.sample_rate // windowing.window)))


def sliding_windows(blocks: Iterable[np.ndarray], window: int, hop: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(start, samples, valid)`` per window of the audio in ``blocks``: ``samples`` is ``window`` long (zero-padded
    past the end), ``valid`` how many of them are audio. Windows start every ``hop`` samples from 0; the last is the
    first that reaches the end, so the windows cover the audio exactly."""
    buffer, buffer_start, start, total, covered = np.zeros(0, np.float32), 0, 0, 0, 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        total += len(block)
        while start + window <= total:
            yield start, buffer[start - buffer_start:start - buffer_start + window], window
            covered, start = start + window, start + hop
        buffer, buffer_start = buffer[start - buffer_start:], start
    if total and covered < total:
        tail = buffer[start - buffer_start:]
        yield start, np.pad(tail, (0, window - len(tail))), len(tail)


def each_window(run: Callable[[np.ndarray], Sequence], blocks: Iterable[np.ndarray], windowing: Windowing,
                batch_size: int = 16) -> Iterator[tuple[int, int, Any]]:
    """``(start, valid, output)`` per window of the audio in ``blocks`` (see :func:`sliding_windows`), where
    ``run(waveforms [B, window])`` answers a batch of windows (see :func:`windows_per_batch`) with one output per
    window. Holds one batch of windows at a time."""
    batch_size = windows_per_batch(windowing, batch_size)
    batch: list[tuple[int, np.ndarray, int]] = []
    for item in itertools.chain(sliding_windows(blocks, windowing.window, windowing.hop), [None]):
        if item is not None:
            batch.append(item)
        if batch and (item is None or len(batch) == batch_size):
            outputs = run(np.stack([samples for _, samples, _ in batch]))
            yield from ((start, valid, out) for (start, _, valid), out in zip(batch, outputs))
            batch = []


class FrameGrid:
    """Frame values ``[n, D]`` of overlapping windows averaged on one frame grid: :meth:`add` a window's frames at
    their first frame index, :meth:`pop` the frames no later window reaches. Holds only the frames not yet popped."""

    def __init__(self, width: int) -> None:
        self.sums, self.counts, self.first = np.zeros((0, width)), np.zeros(0, np.int64), 0

    def add(self, first: int, values: np.ndarray) -> None:
        end = first + len(values) - self.first
        if end > len(self.sums):
            self.sums = np.concatenate([self.sums, np.zeros((end - len(self.sums), self.sums.shape[1]))])
            self.counts = np.concatenate([self.counts, np.zeros(end - len(self.counts), np.int64)])
        self.sums[first - self.first:end] += values
        self.counts[first - self.first:end] += 1

    def pop(self, upto: int | None = None) -> np.ndarray:
        """The mean values of the frames before ``upto`` (all frames held when None), which leave the grid."""
        n = len(self.sums) if upto is None else max(0, min(upto - self.first, len(self.sums)))
        out = (self.sums[:n] / np.maximum(self.counts[:n], 1)[:, None]).astype(np.float32)
        self.sums, self.counts, self.first = self.sums[n:], self.counts[n:], self.first + n
        return out


def window_frames(start: int, valid: int, frames: int, windowing: Windowing,
                  frames_per_second: float) -> tuple[int, int]:
    """``(first, count)``: the grid index of a window's first frame, and how many of its frames hold audio."""
    per_frame = windowing.sample_rate / frames_per_second
    return round(start / per_frame), min(frames, int(np.ceil(valid / per_frame)))


def final_frames(run: Callable[[np.ndarray], Sequence[np.ndarray]], blocks: Iterable[np.ndarray],
                 windowing: Windowing, frames_per_second: float, width: int,
                 batch_size: int = 16) -> Iterator[tuple[np.ndarray, int]]:
    """The frame values ``[n, width]`` that ``run(waveforms [B, window]) -> [B, T, width]`` gives the audio of
    ``blocks``, overlapping windows averaged on one :class:`FrameGrid`, in order as they become final (no later
    window reaches them), each with the number of audio samples heard so far."""
    grid = FrameGrid(width)
    hop_frames = round(windowing.hop * frames_per_second / windowing.sample_rate)
    audio_end = 0
    for start, valid, values in each_window(run, blocks, windowing, batch_size):
        first, count = window_frames(start, valid, len(values), windowing, frames_per_second)
        grid.add(first, values[:count])
        audio_end = start + valid
        yield grid.pop(first + hop_frames), audio_end  # the next window starts there: the frames before it are final
    yield grid.pop(), audio_end


@dataclass(frozen=True)
class TimelineRow:
    """One window of a clip model's timeline: its span in seconds and its top classes."""

    start: float
    end: float
    top: list[tuple[str, float]]


def probabilities(task: Task, logits: np.ndarray) -> np.ndarray:
    return task.probabilities(torch.from_numpy(np.asarray(logits, np.float32))).numpy()


def _probabilities_of(task: Task, logits_of: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda waveforms: probabilities(task, logits_of(waveforms))


def clip_timeline(logits_of: Callable[[np.ndarray], np.ndarray], task: Task, classes: Sequence[str],
                  blocks: Iterable[np.ndarray], windowing: Windowing, top: int,
                  batch_size: int = 16) -> tuple[list[TimelineRow], np.ndarray]:
    """A clip model's timeline over the audio of ``blocks`` and the mean class probabilities of its windows (each
    weighted by the audio it holds); ``logits_of(waveforms [B, N]) -> [B, C]`` runs the model."""
    rate, rows = windowing.sample_rate, []
    total, weight = np.zeros(len(classes), np.float64), 0
    for start, valid, p in each_window(_probabilities_of(task, logits_of), blocks, windowing, batch_size):
        best = np.argsort(-p, kind="stable")[:min(top, len(classes))]
        rows.append(TimelineRow(start / rate, (start + valid) / rate, [(classes[i], float(p[i])) for i in best]))
        total += valid * p
        weight += valid
    return rows, (total / max(weight, 1)).astype(np.float32)


class EventTracker:
    """Events from final frame probabilities that arrive in order: a run of frames above ``threshold`` per class,
    open across calls to :meth:`push` until a frame below it (or :meth:`finish`) closes it."""

    def __init__(self, classes: Sequence[str], frames_per_second: float, threshold: float) -> None:
        self.classes, self.fps, self.threshold = list(classes), frames_per_second, threshold
        self.onsets = np.full(len(classes), -1, np.int64)  # the open event's first frame per class, -1: none open
        self.events: list[tuple[float, float, str]] = []
        self.next_frame = 0

    def push(self, probs: np.ndarray) -> None:
        """The next frames' probabilities ``[n, C]`` (following the previous push)."""
        active = probs > self.threshold
        for c in range(len(self.classes)):
            flags = np.concatenate([[self.onsets[c] >= 0], active[:, c]])
            for edge in np.flatnonzero(flags[1:] != flags[:-1]):  # edge e: frame next_frame + e changes state
                frame = self.next_frame + int(edge)
                if flags[edge + 1]:
                    self.onsets[c] = frame
                else:
                    self.events.append((self.onsets[c] / self.fps, frame / self.fps, self.classes[c]))
                    self.onsets[c] = -1
        self.next_frame += len(probs)

    def finish(self, duration: float) -> list[tuple[float, float, str]]:
        """All events, sorted by onset; those still open end at ``duration`` seconds."""
        for c in np.flatnonzero(self.onsets >= 0):
            self.events.append((self.onsets[c] / self.fps, duration, self.classes[c]))
        self.onsets[:] = -1
        return sorted((on, min(off, duration), name) for on, off, name in self.events if on < duration)


def frame_events(logits_of: Callable[[np.ndarray], np.ndarray], task: Task, classes: Sequence[str],
                 frames_per_second: float, blocks: Iterable[np.ndarray], windowing: Windowing, threshold: float,
                 batch_size: int = 16) -> list[tuple[float, float, str]]:
    """Events ``(onset, offset, class)`` of a frame-wise model over the audio of ``blocks``:
    ``logits_of(waveforms [B, N]) -> [B, T, C]``; overlapping windows' frame probabilities are averaged."""
    tracker, audio_end = EventTracker(classes, frames_per_second, threshold), 0
    for probs, audio_end in final_frames(_probabilities_of(task, logits_of), blocks, windowing, frames_per_second,
                                         len(classes), batch_size):
        tracker.push(probs)
    return tracker.finish(audio_end / windowing.sample_rate)
