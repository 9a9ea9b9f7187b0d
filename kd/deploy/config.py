"""The settings and reports of ``kd export``: :class:`ExportConfig` (one run), :class:`QuantRecipe` (how int8 is
quantised), :class:`QuantReport` (what int8 cost) and :class:`ExportResult` (the written file and its checks)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxruntime.quantization import CalibrationMethod

from kd.core.complexity import ExportedComplexity
from kd.options import QUANTIZATIONS, Quantization
from kd_errors import KdError

__all__ = ["CALIBRATORS", "LAYER_OPS", "ExportConfig", "ExportResult", "ProgressFn", "QuantRecipe",
           "QuantReport"]

LAYER_OPS = ("Conv", "Gemm", "MatMul")  # the operators whose weights and inputs int8 quantises
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class QuantRecipe:
    """How the network is quantised to int8 (ONNX Runtime static quantisation, QDQ format).

    Weights and inputs of the convolutions and matrix products become int8 (weights) and uint8 (activations), and
    with ``elementwise`` so do the operators between them that ONNX Runtime has int8 kernels for (residual
    additions, gating products, sigmoids, ReLUs, pooling), so that no float32 island (dequantise, compute,
    quantise again) sits between two quantised layers: on CP-Mobile's network that made int8 faster than float32
    (0.79 against 0.99 ms on one thread) where quantising the layers alone left it as slow (0.95 ms). HardSwish and
    spatial means are first rewritten into operators that have int8 kernels (:func:`kd.deploy.quantize.in_int8_operators`);
    what still has none (other ReduceMeans, GRN's norms) stays float32.

    Attributes:
        per_channel: one weight scale per output channel (else one per tensor).
        calibrate_method: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime's calibrators). ``percentile``
            (ranges at the 99.999th percentile) keeps the rare large activations after ReLU from stretching the
            uint8 range: on two CP-Mobiles trained on the demo scenes it gave the smaller or equal mean logit error
            (0.035 vs 0.049, 0.037 vs 0.037) with the int8 and float32 predictions agreeing on 98.5-99 % of clips.
        keep_float: layers kept in float32: ``first`` (the convolution on the spectrogram: 80 parameters in
            CP-Mobile, the layer most sensitive to quantisation) and/or ``last`` (the classifier).
        elementwise: quantise the operators between the layers too (see above), else the layers only.
    """

    per_channel: bool = True
    calibrate_method: str = "percentile"
    keep_float: tuple[str, ...] = ("first",)
    elementwise: bool = True

    def describe(self) -> str:
        kept = ", ".join(f"{k} layer" for k in self.keep_float)
        between = ("element-wise ops with int8 kernels uint8 too; float32: frontend, ops without int8 kernels"
                   if self.elementwise else "float32: frontend, element-wise ops")
        return (f"int8 static (ONNX Runtime QDQ): {'/'.join(LAYER_OPS)} weights int8 per "
                f"{'channel' if self.per_channel else 'tensor'}, inputs uint8 ({self.calibrate_method} calibration); "
                f"{between}{', ' + kept if kept else ''}")


CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}


@dataclass(frozen=True)
class ExportConfig:
    """One ``kd export`` run.

    Attributes:
        checkpoint: a student checkpoint written by ``kd distill``.
        out: the ``.onnx`` file to write.
        frontend: include the log-mel frontend (the file takes waveforms) or not (it takes spectrograms).
        seconds: the clip length the file is exported, probed and calibrated for (default: the checkpoint's).
        quantize: None (float32) or ``int8``.
        calibration: ``FORMAT:PATH`` of a dataset with the checkpoint's classes; its ``calibration_split`` calibrates
            int8 activations and probes float32 parity, its ``check_split`` measures the int8 accuracy drop.
        calibration_clips: clips of the calibration split used (spread evenly over it).
        check_clips: at most this many clips of the check split (spread evenly).
        max_drop: the largest acceptable drop of the task's metric (0.01 = one point of accuracy).
        qat_epochs, qat_lr: quantisation-aware fine-tuning (:func:`kd.deploy.quantize.quantization_aware_finetune`) when post-training
            quantisation drops more than ``max_drop``; the file keeps whichever of the two drops less (0: never).
        strict: refuse to write an int8 file whose drop exceeds ``max_drop``.
        device_id: from a device-specific checkpoint (``kd device-finetune``), export that recording device's model
            (default: the general one).
    """

    checkpoint: str
    out: str
    frontend: bool = True
    seconds: float | None = None
    quantize: Quantization | None = None
    calibration: str | None = None
    calibration_split: str = "train"
    check_split: str = "eval"
    calibration_clips: int = 256
    check_clips: int = 2000
    recipe: QuantRecipe = field(default_factory=QuantRecipe)
    max_drop: float = 0.01
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    strict: bool = False
    batch_size: int = 16
    device_id: str | None = None

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise KdError(f"--quantize {self.quantize}: expected one of {', '.join(QUANTIZATIONS)}")
        if self.quantize and not self.calibration:
            raise KdError("--quantize int8 needs --calibration FORMAT:PATH (clips of the training data)")
        if Path(self.out).suffix.lower() != ".onnx":
            raise KdError(f"--out {self.out}: the file name must end in .onnx")
        if self.seconds is not None and self.seconds <= 0:
            raise KdError(f"--seconds must be positive, got {self.seconds}")
        if self.recipe.calibrate_method not in CALIBRATORS:
            raise KdError(f"calibration method {self.recipe.calibrate_method!r}: expected one of {', '.join(CALIBRATORS)}")
        if min(self.calibration_clips, self.check_clips, self.batch_size) < 1:
            raise KdError("calibration_clips, check_clips and batch_size must be at least 1")
        if self.qat_epochs < 0 or self.qat_lr <= 0:
            raise KdError("--qat-epochs must be 0 or more and the QAT learning rate positive")


@dataclass(frozen=True)
class QuantReport:
    """What int8 quantisation cost: the task's metric of the float32 checkpoint and of the int8 file.

    Attributes:
        method: ``post-training`` or ``quantisation-aware (N epochs)``, the one the file holds.
        post_training_int8: the post-training figure, when quantisation-aware fine-tuning replaced it.
        float32_ms, int8_ms: one clip through the whole float32 and int8 files on one thread of the exporting
            machine (median of 20 turns). int8 is not faster everywhere: ONNX Runtime's float32 kernels on x86
            are strong, and its int8 depthwise convolutions and element-wise operators are not (BENCHMARKS.md).
    """

    recipe: str
    method: str
    metric: str
    float32: float
    int8: float
    drop: float
    check_clips: int
    calibration_clips: int
    post_training_int8: float | None = None
    float32_ms: float | None = None
    int8_ms: float | None = None


@dataclass(frozen=True)
class ExportResult:
    """A written file and what was checked (max |differences| on ``parity_inputs``).

    Attributes:
        parity: the file's logits against PyTorch's (float32), waveform (or spectrogram) in.
        network_parity: the network's logits against PyTorch's on PyTorch's spectrograms (checked).
        frontend_parity: the frontend's spectrogram against PyTorch's (checked); None without the frontend.
        torch_vs_exact: PyTorch's own float32 logits against those of an exact (float64) frontend, the scale of
            ``parity`` that float32 rounding alone explains; None without the frontend.
    """

    path: str
    bytes: int
    metadata: dict[str, str]
    parity: float
    network_parity: float
    frontend_parity: float | None
    torch_vs_exact: float | None
    parity_inputs: str
    complexity: ExportedComplexity
    quantization: QuantReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
