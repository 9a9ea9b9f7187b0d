"""``kd submit``: a DCASE Task 1 submission from a trained student, in one folder.

The challenge asks for two files per system (DCASE'24/'25 Task 1 submission instructions):

* ``<label>.output.csv``: tab-separated, a header ``filename  scene_label  <class> ...`` and one row per file of
  the evaluation set: the file name as the dataset lists it (``audio/<id>.wav``), the predicted scene, and the
  probability of every scene (a softmax over the student's logits, summing to one);
* ``<label>.meta.yaml``: what the system is: its label, the student, the teachers it was distilled from, the
  training split (DCASE'24's data-efficient subsets), the input it takes, and its complexity as the rules count it
  (parameters, MACs per inference, parameter memory by data type and the DCASE limits, from :mod:`kd.core.complexity`
  for a checkpoint and from the file itself for an exported one), and the accuracy on a labelled split when one is
  given.

The student is a ``kd distill`` checkpoint or a ``kd export`` ``.onnx`` file (int8 included), so what is
submitted is exactly what was measured. A device-specific checkpoint (``kd device-finetune``) predicts each file
with its recording device's parameters where the dataset records the device (the general ones elsewhere), and the
metadata lists those devices.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.special import softmax

from kd.core.checkpoints import DEVICE_MODELS, load_student
from kd.core.complexity import Complexity, ExportedComplexity, complexity, exported_complexity
from kd.data import Dataset, open_dataset
from kd.data.open import parse_spec
from kd.deploy.predict import Predictor, device_predictors, evaluate_predictor, is_onnx, open_predictor
from kd.evaluate.loop import run_loader
from kd.tasks import ASC
from kd.train.loaders import ClipDataset, make_loader
from kd_errors import KdError

__all__ = ["Submission", "SubmitConfig", "submit"]

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SubmitConfig:
    """``model`` (a checkpoint or ``.onnx`` file) run over ``split`` of ``dataset``, written to ``out`` as system
    ``label``; ``score_split`` (a labelled split) adds its accuracy to the metadata."""

    model: str
    dataset: str
    out: str
    label: str
    split: str | None = None  # default: eval, or every file of a folder: dataset
    score_split: str | None = None
    device: str = "auto"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not LABEL.match(self.label):
            raise KdError(f"--label {self.label!r}: use letters, digits, '_', '.' and '-' (e.g. Surname_INST_task1_1)")


@dataclass(frozen=True)
class Submission:
    output: Path
    meta: Path
    files: int
    accuracy: float | None


def submit(cfg: SubmitConfig) -> Submission:
    """Write the output file and the metadata of a DCASE Task 1 submission (see the module docstring)."""
    predictor = open_predictor(cfg.model, cfg.device)
    if predictor.task is not ASC:
        raise KdError(f"{cfg.model} is a {predictor.task.name} model; DCASE Task 1 submissions are scene classifiers")
    split = cfg.split or (None if parse_spec(cfg.dataset)[0] == "folder" else "eval")
    data = open_dataset(cfg.dataset, split=split)
    if data.classes and data.classes != predictor.classes:  # an evaluation set without labels lists no scenes
        raise KdError(f"{cfg.model} was trained on other scenes than {cfg.dataset} lists")
    by_device = device_predictors(cfg.model, cfg.device)
    probs = _probabilities(predictor, data, cfg.batch_size, by_device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    output = out / f"{cfg.label}.output.csv"
    _write_output(output, data, predictor.classes, probs)
    accuracy = None
    if cfg.score_split:
        scored = open_dataset(cfg.dataset, split=cfg.score_split)
        accuracy = float(evaluate_predictor(predictor, scored, scored.labelled_clips, cfg.batch_size,
                                            by_device=by_device)["accuracy"])
    meta = out / f"{cfg.label}.meta.yaml"
    meta.write_text(yaml.safe_dump(_metadata(cfg, predictor, accuracy), sort_keys=False))
    return Submission(output, meta, len(data.clips), accuracy)


def _probabilities(predictor: Predictor, data: Dataset, batch_size: int,
                   by_device: Mapping[str, Predictor]) -> np.ndarray:
    """Scene probabilities ``[clips, classes]`` in the order of ``data.clips`` (a clip recorded by a device of
    ``by_device`` through that device's predictor)."""
    dataset = ClipDataset(data, data.clips, sample_rate=predictor.sample_rate, seconds=predictor.seconds,
                          num_classes=len(predictor.classes))
    loader = make_loader(dataset, batch_size, train=False)
    logits, indices = run_loader(lambda audio: predictor.logits(audio.numpy()), loader,
                                 {d: (lambda audio, p=p: p.logits(audio.numpy())) for d, p in by_device.items()})
    if sorted(indices.tolist()) != list(range(len(data.clips))):
        raise KdError(f"{len(data.clips) - len(set(indices.tolist()))} file(s) of {data.spec} could not be read; a "
                      "submission needs a row for every file")
    probs = np.empty((len(data.clips), len(predictor.classes)), np.float64)
    probs[indices] = softmax(logits.astype(np.float64), axis=-1)
    return probs


def _write_output(path: Path, data: Dataset, classes: list[str], probs: np.ndarray) -> None:
    """A row per file, named as below the dataset's folder (``audio/<id>.wav`` in TAU's layouts)."""
    root = parse_spec(data.spec)[1]
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "scene_label", *classes])
        for clip, p in zip(data.clips, probs):
            source = Path(clip.source)
            name = source.relative_to(root).as_posix() if source.is_relative_to(root) else source.name
            writer.writerow([name, classes[int(p.argmax())], *(f"{x:.6f}" for x in p)])


def _metadata(cfg: SubmitConfig, predictor: Predictor, accuracy: float | None) -> dict[str, Any]:
    if is_onnx(cfg.model):
        student_meta, cost = {}, _complexity(exported_complexity(cfg.model, predictor.seconds))
    else:
        model, student_meta = load_student(cfg.model)  # read once: its metadata and its complexity
        cost = _complexity(complexity(model, predictor.seconds))
    return {
        "submission": {"label": cfg.label, "task": "task1", "output": f"{cfg.label}.output.csv"},
        "system": {
            "model": cfg.model, "student": student_meta.get("name", predictor.task.name),
            "teachers": student_meta.get("teachers"), "training_data": student_meta.get("dataset"),
            "training_split": student_meta.get("train_split"),
            "device_specific_models": student_meta.get(DEVICE_MODELS, []),
            "input": {"sampling_rate": predictor.sample_rate, "seconds": predictor.seconds,
                      "classes": list(predictor.classes)},
            "complexity": cost,
        },
        "results": {"development": {"split": cfg.score_split, "accuracy": accuracy}},
    }


def _complexity(c: Complexity | ExportedComplexity) -> dict[str, Any]:
    """Parameters, MACs and parameter memory as the challenge counts them, of the checkpoint or the exported file
    (whose parameters are stored at their layers' precision)."""
    memory = c.stored_bytes if isinstance(c, ExportedComplexity) else c.param_bytes_by_dtype
    return {"total_parameters": c.params, "total_macs": c.macs, "parameter_bytes": c.param_bytes,
            "memory_by_dtype": dict(memory), "dcase_limits": dict(c.dcase23)}
