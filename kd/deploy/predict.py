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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kd.core.checkpoints import DEVICE_MODELS, TeacherSpec, build_teacher, checkpoint_meta, load_student
from kd.core.devices import select_device
from kd.data import AudioError, AudioStream, Dataset, load_audio, open_dataset
from kd.deploy.windows import (
    EventTracker,
    TimelineRow,
    Windowing,
    clip_timeline,
    frame_events,
    probabilities,
    window_frames,
    windows_per_batch,
)
from kd.evaluate.loop import LogitsOf, run_loader, score
from kd.options import PREDICTION_FORMATS, PredictionFormat
from kd.tasks import Task, get_task
from kd.train.loaders import ClipDataset, make_loader
from kd_errors import KdError
from students import Student
from teachers import Teacher, create_teacher, list_teachers, teacher_cfg

__all__ = [
    "AUDIO_SUFFIXES", "LIST_SUFFIXES", "Prediction", "Predictor", "TorchPredictor", "collect_audio",
    "device_predictors", "evaluate_checkpoint", "evaluate_predictor", "format_predictions", "is_onnx", "open_predictor",
    "predict_files", "teacher_predictor", "timeline_spans",
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
    """A student (or a teacher) on a torch device, in the :class:`Predictor` contract.

    Args:
        seconds: the clip length it is run on (default: the length it was trained on, from ``meta``).
    """

    def __init__(self, model: Student | Teacher, meta: dict[str, Any], device: torch.device,
                 seconds: float | None = None):
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


def open_predictor(model: str, device: str = "auto", device_id: str | None = None) -> Predictor:
    """The model ``model`` names, ready to run: an ``.onnx`` file from ``kd export`` (ONNX Runtime), a ``kd distill``
    or ``kd train-teacher`` checkpoint, or a registered teacher as ``NAME`` (the release that ships with kd) or
    ``NAME=CHECKPOINT`` (e.g. an official release file).

    Args:
        device_id: the recording device of the audio it will run on: a device-specific checkpoint (``kd
            device-finetune``) runs with that device's parameters, or its general ones for a device it has none for.
    """
    if is_onnx(model):
        if device_id is not None:
            raise KdError(f"{model} holds one model; --device-id picks a device's parameters from a device-specific "
                          "checkpoint (kd export --device-id writes one device's model)")
        try:  # onnxruntime comes with the optional [export] extra, so it is imported only for .onnx files
            from kd.deploy.onnx_runtime import OnnxStudent
        except ModuleNotFoundError as e:
            raise KdError(f"running {model} needs ONNX Runtime: pip install 'kd-audio[export]' (no {e.name})") from None
        return OnnxStudent(model, device=device)
    if Path(model).is_file():
        meta = checkpoint_meta(model) or {}
        if meta.get("kind") == "teacher":
            return teacher_predictor(TeacherSpec(meta["name"], model), device, device_id)
        student, meta = load_student(model, device_id)
        return TorchPredictor(student, meta, select_device(device))
    return teacher_predictor(TeacherSpec.parse(model), device, device_id)


def teacher_predictor(spec: TeacherSpec, device: str = "auto", device_id: str | None = None) -> TorchPredictor:
    """A teacher as a :class:`Predictor`: a ``kd train-teacher`` checkpoint with the classes it was trained on, or a
    registered teacher with its shipped release (or ``spec.checkpoint``) and the classes its registry entry names
    (numbered where it names none, as for the AudioSet releases).

    Raises:
        KdError: ``spec`` names no teacher and no file, or ``device_id`` (teachers have no device-specific parameters).
    """
    if device_id is not None:
        raise KdError("--device-id picks a device's parameters from a kd device-finetune checkpoint; a teacher has none")
    if spec.name not in list_teachers():
        raise KdError(f"{spec.name}: no such file, and no registered teacher (see `kd teachers`)")
    meta = checkpoint_meta(spec.checkpoint) if spec.checkpoint else None
    if meta and meta.get("kind") == "teacher":
        head = meta
        model = build_teacher(spec)
    else:
        head = teacher_cfg(spec.name)
        model = build_teacher(spec) if spec.checkpoint else create_teacher(spec.name, pretrained=True)
    classes = head.get("classes") or [str(i) for i in range(model.num_classes)]
    task = head.get("task") or ("sed" if model.frames_per_second else "tagging")
    return TorchPredictor(model, {"classes": classes, "task": task, "seconds": model.clip_seconds},
                          select_device(device))


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
    """One file's answer, or its ``error``. Clip models: ``top`` classes of the whole file (its windows' mean
    probabilities) and the ``timeline`` of its windows; frame-wise models: ``events`` over the whole file."""

    path: str
    top: list[tuple[str, float]] | None = None
    events: list[tuple[float, float, str]] | None = None
    error: str | None = None
    timeline: list[TimelineRow] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.top is not None:
            out["top"] = _top_dicts(self.top)
        if self.timeline is not None:
            out["timeline"] = [{"start": r.start, "end": r.end, "top": _top_dicts(r.top)} for r in self.timeline]
        if self.events is not None:
            out["events"] = [{"onset": on, "offset": off, "event": name} for on, off, name in self.events]
        out["error"] = self.error
        return out


def _top_dicts(top: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"class": name, "probability": p} for name, p in top]


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
                  batch_size: int = 16, workers: int = 4, device_id: str | None = None, window: float | None = None,
                  hop: float | None = None) -> list[Prediction]:
    """Top classes and a timeline per file (clip models) or events with onsets and offsets (frame-wise models).

    Every file runs in windows of ``window`` seconds every ``hop`` seconds (defaults: see
    :meth:`kd.deploy.windows.Windowing.for_model`), the last one zero-padded: files up to one window long are
    decoded whole by ``workers`` threads and run together in batches; longer ones are read in blocks, resampled
    block by block, and their windows batched, so memory does not grow with a file's length. A batch holds
    ``batch_size`` windows, and at most 20 s of audio (:func:`kd.deploy.windows.windows_per_batch`).

    Args:
        model: a ``kd distill`` checkpoint, a ``kd export`` ``.onnx`` file or a teacher (see :func:`open_predictor`).
        inputs: files, folders, glob patterns or list files (see :func:`collect_audio`).
        device_id: the recording device of every input, for a device-specific checkpoint.
    """
    if top < 1 or batch_size < 1 or workers < 1:
        raise KdError("--top, --batch-size and --workers must be at least 1")
    files = collect_audio(inputs)
    predictor = open_predictor(model, device, device_id)
    frame_level = predictor.task.frame_level
    windowing = Windowing.for_model(predictor.sample_rate, predictor.seconds,
                                    predictor.frames_per_second if frame_level else None, window, hop)
    answer = _Answerer(predictor, windowing, top, threshold, batch_size)
    results: list[Prediction | None] = [None] * len(files)
    short: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        waves = np.stack([np.pad(audio, (0, windowing.window - len(audio))) for _, audio in short])
        for (index, audio), logits in zip(short, predictor.logits(waves)):
            results[index] = answer.one_window(files[index], logits, len(audio))
        short.clear()

    for index, item in enumerate(_opened(files, predictor.sample_rate, windowing, workers, 4 * batch_size)):
        if isinstance(item, AudioError):
            results[index] = Prediction(files[index], error=item.reason)
        elif isinstance(item, np.ndarray) and len(item) <= windowing.window:
            short.append((index, item))
            if len(short) == windows_per_batch(windowing, batch_size):
                flush()
        else:
            results[index] = answer.windowed(files[index], [item] if isinstance(item, np.ndarray) else item)
    if short:
        flush()
    return [r for r in results if r is not None]


class _Answerer:
    """A file's :class:`Prediction` from one window's logits, or from the windows of its audio blocks."""

    def __init__(self, predictor: Predictor, windowing: Windowing, top: int, threshold: float, batch_size: int):
        self.predictor, self.windowing, self.top, self.threshold = predictor, windowing, top, threshold
        self.batch_size = batch_size

    def one_window(self, path: str, logits: np.ndarray, valid: int) -> Prediction:
        p, rate = self.predictor, self.windowing.sample_rate
        probs = probabilities(p.task, logits)
        if p.task.frame_level:
            tracker = EventTracker(p.classes, p.frames_per_second, self.threshold)
            tracker.push(probs[:window_frames(0, valid, len(probs), self.windowing, p.frames_per_second)[1]])
            return Prediction(path, events=tracker.finish(valid / rate))
        top = self._top(probs)
        return Prediction(path, top=top, timeline=[TimelineRow(0.0, valid / rate, top)])

    def windowed(self, path: str, blocks: Iterable[np.ndarray]) -> Prediction:
        p = self.predictor
        try:
            if p.task.frame_level:
                return Prediction(path, events=frame_events(p.logits, p.task, p.classes, p.frames_per_second, blocks,
                                                            self.windowing, self.threshold, self.batch_size))
            timeline, mean = clip_timeline(p.logits, p.task, p.classes, blocks, self.windowing, self.top,
                                           self.batch_size)
            return Prediction(path, top=self._top(mean), timeline=timeline)
        except AudioError as e:  # a bad block, or a file silent to its end
            return Prediction(path, error=e.reason)

    def _top(self, probs: np.ndarray) -> list[tuple[str, float]]:
        classes = self.predictor.classes
        best = np.argsort(-probs, kind="stable")[:min(self.top, len(classes))]
        return [(classes[i], float(probs[i])) for i in best]


def _opened(files: Sequence[str], sample_rate: int, windowing: Windowing, workers: int,
            window: int) -> Iterator[np.ndarray | AudioStream | AudioError]:
    """Each file in order, at most ``window`` in flight: decoded whole when its header says it fits one model window,
    else as an :class:`AudioStream` to read block by block, or its :class:`AudioError`."""
    longest = windowing.window / windowing.sample_rate

    def open_one(path: str) -> np.ndarray | AudioStream | AudioError:
        try:
            stream = AudioStream(path, sample_rate, clip_id=path)
            if stream.duration > longest:
                return stream
            return load_audio(path, sample_rate, None, clip_id=path)
        except AudioError as e:
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future] = deque()
        for path in files:
            pending.append(pool.submit(open_one, path))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def timeline_spans(timeline: Sequence[TimelineRow]) -> list[tuple[float, float, str, float]]:
    """Consecutive windows with the same top class joined: ``(start, end, class, mean probability)``."""
    spans: list[tuple[float, float, str, list[float]]] = []
    for row in timeline:
        name, prob = row.top[0]
        if spans and spans[-1][2] == name:
            spans[-1] = (spans[-1][0], row.end, name, [*spans[-1][3], prob])
        else:
            spans.append((row.start, row.end, name, [prob]))
    return [(start, end, name, float(np.mean(probs))) for start, end, name, probs in spans]


def format_predictions(predictions: Sequence[Prediction], fmt: PredictionFormat) -> str:
    """``csv`` or ``json`` (a list of objects). CSV rows: clip models one per window of each file's timeline,
    ``path, start, end, class_1, probability_1, ..., error``; frame-wise models one per event, ``path, onset,
    offset, event, error``; a file without windows or events (an error) on one row of empty cells."""
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
    writer.writerow(["path", "start", "end",
                     *(f"{kind}_{i}" for i in range(1, width + 1) for kind in ("class", "probability")), "error"])
    for p in predictions:
        for row in p.timeline or [None]:
            cells = [cell for name, prob in (row.top if row else []) for cell in (name, f"{prob:.6f}")]
            span = [f"{row.start:.3f}", f"{row.end:.3f}"] if row else ["", ""]
            writer.writerow([p.path, *span, *cells, *[""] * (2 * width - len(cells)), p.error or ""])
    return buffer.getvalue()
