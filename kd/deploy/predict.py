"""``kd eval`` and ``kd predict``: a trained student's metrics on a dataset split, its predictions for audio files.

Both take a checkpoint written by ``kd distill`` or a file written by ``kd export`` (``.onnx``, run with ONNX
Runtime), so the deployed artifact is checked with the same commands and metrics as the checkpoint: both become
a :class:`Predictor` (waveforms in, logits out). A device-specific checkpoint (``kd device-finetune``) is one
predictor per recording device it was fine-tuned for: ``kd eval`` runs each clip through its device's, ``kd predict
--device-id`` picks one; other devices get the general model.

``kd predict`` serves batch use: its inputs are audio files, folders (searched recursively), glob patterns and list
files (``.txt``/``.lst``: one path per line, relative to the list), decoded by a pool of threads while the model
runs, and the answer is one :class:`Prediction` per file, in input order; a file that cannot be decoded gets its
reason instead of stopping the others. :func:`format_predictions` writes them as CSV or JSON for scripts.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kd.core.checkpoints import DEVICE_MODELS, checkpoint_meta, load_student
from kd.core.devices import select_device
from kd.data import AudioError, Dataset, load_audio, open_dataset
from kd.evaluate.loop import LogitsOf, run_loader, score
from kd.options import PREDICTION_FORMATS, PredictionFormat
from kd.tasks import Task, get_task
from kd.train.loaders import ClipDataset, make_loader
from kd_errors import KdError
from students import Student

__all__ = [
    "AUDIO_SUFFIXES", "LIST_SUFFIXES", "Prediction", "Predictor", "TorchPredictor", "collect_audio", "detect_events",
    "device_predictors", "evaluate_checkpoint", "evaluate_predictor", "format_predictions", "is_onnx", "open_predictor",
    "predict_files",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
LIST_SUFFIXES = (".txt", ".lst", ".list")


class Predictor(Protocol):
    """A student ready to run: a checkpoint in PyTorch or an exported file in ONNX Runtime."""

    sample_rate: int
    frames_per_second: float | None
    classes: list[str]
    task: Task
    seconds: float

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        """Logits ``[B, C]`` (or frame logits ``[B, T, C]``) of float32 waveforms ``[B, N]`` at ``sample_rate``."""


class TorchPredictor:
    """A student checkpoint on a torch device, in the :class:`Predictor` contract.

    Args:
        seconds: the clip length it is run on (default: the length it was trained on, from ``meta``).
    """

    def __init__(self, model: Student, meta: dict[str, Any], device: torch.device, seconds: float | None = None):
        self.model, self.device = model.to(device).eval(), device
        self.sample_rate, self.frames_per_second = model.sample_rate, model.frames_per_second
        self.classes, self.task = list(meta["classes"]), get_task(meta["task"])
        self.seconds = float(seconds or meta["seconds"])

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(waveforms, dtype=np.float32)).to(self.device)
            return self.task.logits(self.model(batch)).float().cpu().numpy()


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix, as ``kd export`` writes them)."""
    return Path(path).suffix.lower() == ".onnx"


def open_predictor(path: str, device: str = "auto", device_id: str | None = None) -> Predictor:
    """The student in ``path``: an ``.onnx`` file from ``kd export`` (ONNX Runtime) or a ``kd distill`` checkpoint.

    Args:
        device_id: the recording device of the audio it will run on: a device-specific checkpoint (``kd
            device-finetune``) runs with that device's parameters, or its general ones for a device it has none for.
    """
    if is_onnx(path):
        if device_id is not None:
            raise KdError(f"{path} holds one model; --device-id picks a device's parameters from a device-specific "
                          "checkpoint (kd export --device-id writes one device's model)")
        try:  # onnxruntime comes with the optional [export] extra, so it is imported only for .onnx files
            from kd.deploy.onnx_runtime import OnnxStudent
        except ModuleNotFoundError as e:
            raise KdError(f"running {path} needs ONNX Runtime: pip install 'kd-audio[export]' (no {e.name})") from None
        return OnnxStudent(path, device=device)
    model, meta = load_student(path, device_id)
    return TorchPredictor(model, meta, select_device(device))


def device_predictors(path: str, device: str = "auto") -> dict[str, Predictor]:
    """The models of a device-specific checkpoint, one per device it holds parameters for (none for other files)."""
    if is_onnx(path):
        return {}
    meta = checkpoint_meta(path) or {}
    return {d: open_predictor(path, device, device_id=d) for d in meta.get(DEVICE_MODELS, [])}


def evaluate_checkpoint(checkpoint: str, dataset: str, split: str = "eval", device: str = "auto",
                        batch_size: int = 32, decode_workers: int = 0) -> dict[str, float]:
    """The task metrics of a saved or exported student on the labelled clips of ``split`` of ``dataset`` (what
    ``kd distill`` reports per epoch); a device-specific checkpoint scores each clip with its recording device's
    parameters (the general ones for a device it has none for)."""
    predictor = open_predictor(checkpoint, device)
    data = open_dataset(dataset, split=split)
    if data.classes != predictor.classes:
        raise KdError(f"{checkpoint} was trained on other classes than {dataset} has")
    return evaluate_predictor(predictor, data, data.labelled_clips, batch_size, decode_workers=decode_workers,
                              by_device=device_predictors(checkpoint, device))


def evaluate_predictor(predictor: Predictor, data: Dataset, clips: Sequence[Any], batch_size: int = 32,
                       seconds: float | None = None, decode_workers: int = 0,
                       by_device: Mapping[str, Predictor] | None = None) -> dict[str, float]:
    """The task's metrics of ``predictor`` on ``clips`` of ``data``, each cut or padded to ``seconds``; a clip
    recorded by a device of ``by_device`` runs through that device's predictor instead."""
    if data.task is not predictor.task:
        raise KdError(f"a {predictor.task} model cannot be scored on {data.task} data")
    seconds = float(seconds or predictor.seconds)
    fps = predictor.frames_per_second if data.task.frame_level else None
    num_frames = None
    if fps is not None:
        num_frames = predictor.logits(np.zeros((1, round(seconds * predictor.sample_rate)), np.float32)).shape[1]
    dataset = ClipDataset(data, clips, sample_rate=predictor.sample_rate, seconds=seconds, frames_per_second=fps,
                          num_frames=num_frames)
    loader = make_loader(dataset, batch_size, train=False, decode_workers=decode_workers)
    devices = {d: _numpy_logits(p) for d, p in (by_device or {}).items()}
    return score(loader, *run_loader(_numpy_logits(predictor), loader, devices))


def _numpy_logits(predictor: Predictor) -> LogitsOf:
    return lambda audio: predictor.logits(audio.numpy())


# --- kd predict ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One file's answer: ``top`` classes with probabilities (clip students) or ``events`` (SED), or an ``error``."""

    path: str
    top: list[tuple[str, float]] | None = None
    events: list[tuple[float, float, str]] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.top is not None:
            out["top"] = [{"class": name, "probability": p} for name, p in self.top]
        if self.events is not None:
            out["events"] = [{"onset": on, "offset": off, "event": name} for on, off, name in self.events]
        out["error"] = self.error
        return out


def collect_audio(inputs: Sequence[str]) -> list[str]:
    """The audio files that ``inputs`` name: files, folders (recursively), glob patterns and list files, in order.

    Raises:
        KdError: an input that names nothing, or no audio at all.
    """
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                raise KdError(f"{item}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            lines = [line.strip() for line in path.read_text().splitlines()]
            found = [str(p if p.is_absolute() else path.parent / p)
                     for p in map(Path, [line for line in lines if line and not line.startswith("#")])]
        elif path.is_file():
            found = [item]
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise KdError(f"{item}: the pattern matches no file")
        else:
            raise KdError(f"{item}: no such file, folder or pattern")
        files += found
    if not files:
        raise KdError("no audio files to predict")
    return files


def predict_files(model: str, inputs: Sequence[str], top: int = 3, threshold: float = 0.5, device: str = "auto",
                  batch_size: int = 16, workers: int = 4, device_id: str | None = None) -> list[Prediction]:
    """Top classes per file (clip students) or detected events with onsets/offsets (frame-wise students).

    Each file is decoded whole (resampled to the model's rate) by one of ``workers`` threads; files shorter than
    the clip length the model was trained on are padded with silence to it (events stop at the file's end), longer
    ones run whole. Consecutive files of equal length run as one batch of up to ``batch_size``.

    Args:
        model: a ``kd distill`` checkpoint or a ``kd export`` ``.onnx`` file.
        inputs: files, folders, glob patterns or list files (see :func:`collect_audio`).
        device_id: the recording device of every input, for a device-specific checkpoint (see
            :func:`open_predictor`).
    """
    if top < 1 or batch_size < 1 or workers < 1:
        raise KdError("--top, --batch-size and --workers must be at least 1")
    files = collect_audio(inputs)
    predictor = open_predictor(model, device, device_id)
    clip_samples = round(predictor.seconds * predictor.sample_rate)
    results: list[Prediction | None] = [None] * len(files)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        lengths = [len(audio) for _, audio in batch]
        waves = np.stack([np.pad(audio, (0, max(0, clip_samples - len(audio)))) for _, audio in batch])
        for (index, _), logits, length in zip(batch, predictor.logits(waves), lengths):
            results[index] = _prediction(files[index], logits, predictor, length, top, threshold)
        batch.clear()

    for index, audio in enumerate(_decoded(files, predictor.sample_rate, workers, window=4 * batch_size)):
        if isinstance(audio, AudioError):
            results[index] = Prediction(files[index], error=audio.reason)
            continue
        if batch and (len(batch) == batch_size or len(batch[0][1]) != len(audio)):
            flush()
        batch.append((index, audio))
    if batch:
        flush()
    return [r for r in results if r is not None]


def _decoded(files: Sequence[str], sample_rate: int, workers: int, window: int) -> Iterator[np.ndarray | AudioError]:
    """Each file decoded at ``sample_rate`` (or its :class:`AudioError`), in order, at most ``window`` in flight."""

    def decode(path: str) -> np.ndarray | AudioError:
        try:
            return load_audio(path, sample_rate, None, clip_id=path)
        except AudioError as e:
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future] = deque()
        for path in files:
            pending.append(pool.submit(decode, path))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _prediction(path: str, logits: np.ndarray, predictor: Predictor, length: int, top: int,
                threshold: float) -> Prediction:
    probs = predictor.task.probabilities(torch.from_numpy(np.asarray(logits, np.float32))).numpy()
    classes = predictor.classes
    if predictor.task.frame_level:
        fps = predictor.frames_per_second
        duration = length / predictor.sample_rate
        events = [(on, min(off, duration), name) for on, off, name in detect_events(probs, fps, classes, threshold)
                  if on < duration]
        return Prediction(path, events=events)
    best = np.argsort(-probs, kind="stable")[:min(top, len(classes))]
    return Prediction(path, top=[(classes[i], float(probs[i])) for i in best])


def detect_events(probs: np.ndarray, fps: float, classes: Sequence[str],
                  threshold: float) -> list[tuple[float, float, str]]:
    """Runs of frames above ``threshold``, as ``(onset, offset, class)`` sorted by onset."""
    events = []
    for c, name in enumerate(classes):
        active = np.concatenate([[False], probs[:, c] > threshold, [False]])
        edges = np.flatnonzero(active[1:] != active[:-1])
        events += [(on / fps, off / fps, name) for on, off in zip(edges[::2], edges[1::2])]
    return sorted(events)


def format_predictions(predictions: Sequence[Prediction], fmt: PredictionFormat) -> str:
    """``csv`` (clip students: ``path, class_1, probability_1, ..., error``; SED: one row per event,
    ``path, onset, offset, event, error``, a file without events on one empty row) or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in predictions], indent=2)
    if fmt not in PREDICTION_FORMATS:
        raise KdError(f"unknown format {fmt!r}; expected one of {', '.join(PREDICTION_FORMATS)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if any(p.events is not None for p in predictions):
        writer.writerow(["path", "onset", "offset", "event", "error"])
        for p in predictions:
            rows = [[f"{on:.3f}", f"{off:.3f}", name] for on, off, name in p.events or []] or [["", "", ""]]
            writer.writerows([[p.path, *row, p.error or ""] for row in rows])
        return buffer.getvalue()
    width = max((len(p.top) for p in predictions if p.top), default=0)
    writer.writerow(["path", *(f"{kind}_{i}" for i in range(1, width + 1) for kind in ("class", "probability")),
                     "error"])
    for p in predictions:
        cells = [cell for name, prob in (p.top or []) for cell in (name, f"{prob:.6f}")]
        writer.writerow([p.path, *cells, *[""] * (2 * width - len(cells)), p.error or ""])
    return buffer.getvalue()
