"""Running a student exported by ``kd export`` with ONNX Runtime, the way ``kd eval`` and ``kd predict`` run checkpoints.

An exported file carries what a deployer needs in its ONNX metadata properties (:data:`METADATA_KEYS`, all
strings): the class names, the task, the sample rate, the clip length it was exported for, the frame rate of SED
students, the input it takes (``waveform`` or ``spectrogram``), the frontend's settings and the sha256 of the
checkpoint it came from. :class:`OnnxStudent` reads them back and runs the file on batches of waveforms; a file
exported without its frontend gets its spectrograms from the same log-mel frontend (:class:`layers.MelSTFT`) built
from those settings.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

from kd.tasks import Task, get_task
from kd_errors import KdError
from layers import MelSTFT

__all__ = ["FORMAT_VERSION", "METADATA_KEYS", "ExportedModelInfo", "OnnxStudent", "frontend_from_settings",
           "median_ms", "onnx_providers"]

FORMAT_VERSION = "1"
METADATA_KEYS = (
    "kd_format", "student", "task", "classes", "num_classes", "sample_rate", "clip_seconds", "frames_per_second",
    "input", "input_shape", "output_shape", "min_samples", "frontend", "activation", "quantization",
    "checkpoint", "checkpoint_sha256", "device_id", "dataset", "kd_version",
)


def onnx_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for ``device`` (``auto``: CUDA when this onnxruntime build has it)."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise KdError(f"--device {device}: this onnxruntime build has no CUDA provider "
                          "(pip install onnxruntime-gpu), use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise KdError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@dataclass(frozen=True)
class ExportedModelInfo:
    """The metadata ``kd export`` writes into a file, parsed (see :data:`METADATA_KEYS`)."""

    student: str
    task: Task
    classes: list[str]
    sample_rate: int
    clip_seconds: float
    frames_per_second: float | None
    input: str
    frontend: dict[str, Any]
    quantization: str
    checkpoint_sha256: str
    raw: dict[str, str]

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str) -> ExportedModelInfo:
        if props.get("kd_format") != FORMAT_VERSION:
            found = f"format {props['kd_format']!r}" if "kd_format" in props else "no kd metadata"
            raise KdError(f"{source} is not a model written by kd export ({found})")
        try:
            fps = props["frames_per_second"]
            return cls(
                student=props["student"], task=get_task(props["task"]), classes=list(json.loads(props["classes"])),
                sample_rate=int(props["sample_rate"]), clip_seconds=float(props["clip_seconds"]),
                frames_per_second=float(fps) if fps not in ("", "none") else None, input=props["input"],
                frontend=dict(json.loads(props["frontend"])), quantization=props["quantization"],
                checkpoint_sha256=props["checkpoint_sha256"], raw=dict(props),
            )
        except (KeyError, ValueError) as e:
            raise KdError(f"{source}: kd metadata is incomplete or malformed ({type(e).__name__}: {e})") from None


def frontend_from_settings(settings: dict[str, Any]) -> MelSTFT:
    """The log-mel frontend (eval mode) of the settings ``kd export`` records in ``frontend``."""
    keys = ("n_mels", "sample_rate", "win_length", "hop_length", "n_fft", "fmin", "fmax")
    return MelSTFT(**{k: settings[k] for k in keys}, freqm=0, timem=0).eval()


class OnnxStudent:
    """An exported student in an ONNX Runtime session: waveforms ``[B, N]`` in, logits out (NumPy).

    Args:
        source: the ``.onnx`` file, or its serialised bytes (``name`` then says what to call it in errors).
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (see :func:`onnx_providers`).
        threads: intra-op threads of the session (None: ONNX Runtime's default, one per core).
    """

    def __init__(self, source: str | os.PathLike | bytes, device: str = "auto", threads: int | None = None,
                 name: str | None = None) -> None:
        self.name = name or (str(source) if not isinstance(source, bytes) else "<onnx model>")
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise KdError(f"ONNX model not found: {source}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                                providers=onnx_providers(device))
        except (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KdError(f"{self.name} is not a loadable ONNX model: {first}") from None
        self.info = ExportedModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.name)
        self.input_name = self.session.get_inputs()[0].name
        self._frontend = frontend_from_settings(self.info.frontend) if self.info.input == "spectrogram" else None

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def frames_per_second(self) -> float | None:
        return self.info.frames_per_second

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def task(self) -> Task:
        return self.info.task

    @property
    def seconds(self) -> float:
        return self.info.clip_seconds

    def model_input(self, waveforms: np.ndarray) -> np.ndarray:
        """What the session takes for ``waveforms``: the waveforms, or their spectrograms for frontend-less files."""
        waveforms = np.ascontiguousarray(waveforms, dtype=np.float32)
        if self._frontend is None:
            return waveforms
        with torch.inference_mode():
            return self._frontend(torch.from_numpy(waveforms)).numpy()

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        """Logits ``[B, C]`` (or frame logits ``[B, T, C]``) of float32 waveforms ``[B, N]`` at ``sample_rate``."""
        return self.session.run(None, {self.input_name: self.model_input(waveforms)})[0]


def median_ms(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each run, the runs taking turns (so that a load on the machine hits them alike);
    the first calls of a new input shape, which pay for kernel selection and allocation, are not timed."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(values)) for name, values in timings.items()}

