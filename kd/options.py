"""The option vocabularies that the command line offers and the library checks, each defined once here: a
``Literal`` type for annotations and the tuple of its values (read from the type) for ``click.Choice`` and for the
checks in the library's configs.

This module imports nothing but :mod:`typing`, so ``cli.py`` lists the choices without importing torch, NumPy or
zarr (``kd --help`` stays instant); every part of kd may import it. The store's own vocabularies (levels, ensemble
spaces, codecs) belong to :mod:`logit_store`, which cannot import kd: :data:`SPACES` mirrors
``logit_store.ensemble.SPACES`` for the command line, and a test keeps the two equal.
"""
from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "CLIP_CODECS",
    "MISSING_POLICIES",
    "PRECISIONS",
    "PREDICTION_FORMATS",
    "QUANTIZATIONS",
    "REPLAYED_VIEWS",
    "SOFT_LOSSES",
    "SPACES",
    "TASK_NAMES",
    "VIEW_MODES",
    "ClipCodec",
    "MissingPolicy",
    "Precision",
    "PredictionFormat",
    "Quantization",
    "SoftLoss",
    "Space",
    "TaskName",
    "ViewMode",
]

TaskName = Literal["asc", "tagging", "sed"]
TASK_NAMES: tuple[TaskName, ...] = get_args(TaskName)

# how kd teach stores clip logits (kd teach --codec; the codecs themselves are logit_store's)
ClipCodec = Literal["q8", "f16", "f32", "topk"]
CLIP_CODECS: tuple[ClipCodec, ...] = get_args(ClipCodec)

# which stored view of a clip a distillation trains on (kd distill --views; kd.train.loaders.TeacherTargets.views)
ViewMode = Literal["consistent", "clean", "random", "clean-targets"]
VIEW_MODES: tuple[ViewMode, ...] = get_args(ViewMode)
REPLAYED_VIEWS: tuple[ViewMode, ...] = ("consistent", "clean-targets")  # replay the stored view's augmentation

# what kd distill's soft loss matches (kd distill --soft-loss; kd.train.loss.DistillLoss): the task's loss on the
# teacher's probabilities, or the teacher's logits themselves (mean squared error, every logit)
SoftLoss = Literal["probs", "logits"]
SOFT_LOSSES: tuple[SoftLoss, ...] = get_args(SoftLoss)

# what kd distill does with labelled clips the store has no logits for (kd distill --missing)
MissingPolicy = Literal["error", "drop"]
MISSING_POLICIES: tuple[MissingPolicy, ...] = get_args(MissingPolicy)

# where an ensemble of teachers is averaged (kd distill --space; logit_store.ensemble.SPACES)
Space = Literal["logit", "prob"]
SPACES: tuple[Space, ...] = get_args(Space)

# the autocast precision of kd teach's teachers (kd teach --precision; kd.teach.placement.resolve_precision)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# kd export --quantize
Quantization = Literal["int8"]
QUANTIZATIONS: tuple[Quantization, ...] = get_args(Quantization)

# kd predict's machine-readable outputs (kd.deploy.predict.format_predictions); the command adds its table
PredictionFormat = Literal["csv", "json"]
PREDICTION_FORMATS: tuple[PredictionFormat, ...] = get_args(PredictionFormat)
