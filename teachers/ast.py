"""AST: the Audio Spectrogram Transformer and its released AudioSet checkpoints.

Paper: Gong, Chung, Glass, "AST: Audio Spectrogram Transformer", Interspeech 2021 (arXiv:2104.01778).
Origin: github.com/YuanGongND/ast (``src/models/ast_models.py``, ``src/dataloader.py``, ``src/run.py``).

* Model: a DeiT-base distilled ViT on a 1-channel Kaldi fbank; 16x16 patches with stride (fstride,
  tstride); one learnable ``pos_embed`` ``[1, 2 + F' * T', 768]`` over cls, dist and the patch grid
  (frequency-major); logits = ``mlp_head((cls_out + dist_out) / 2)``.
* Frontend (as ``dataloader.py`` does it, at 16 kHz): waveform minus its mean, Kaldi fbank (25 ms Hanning
  frames every 10 ms, 128 mel bins, pre-emphasis 0.97, per-frame DC removal, dither 0, no energy), zero-padded
  to ``input_tdim`` = 1024 frames, SpecAugment masks in training, then ``(fbank - (-4.2677393)) / (2 * 4.5689974)``
  (the AudioSet statistics of ``run.py``).
* Checkpoints: saved from ``DataParallel``, keys ``module.v.*`` (the ViT, including the unused ImageNet heads
  ``module.v.head*``) and ``module.mlp_head.*``. ``checkpoint_filter_fn`` maps them to this module's names
  (``module.v.X`` -> ``X``, ``module.mlp_head`` -> ``head``) and drops the ImageNet heads. For another input
  length the time axis of the positional grid is cut from the middle (shorter) or bilinearly interpolated
  (longer), as ``ASTModel`` does when it adapts the AudioSet checkpoint.
* Longer audio: the authors cut the fbank to 1024 frames. Here nothing is cut: inputs longer than the context
  (10.24 s) are windowed like PaSST's (see ``teachers.Teacher``) and the window logits averaged.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from layers import CheckpointError, mask_along_axis
from layers.fbank import KaldiFbank

from ._base import TeacherInputError, TeacherOutput
from ._registry import DEMO_HEAD, DEMO_PRETRAINING, DEMO_STAGES, register_teacher
from ._vit import SpectrogramTransformer, patch_grid

__all__ = ["AST", "ASTFrontend", "checkpoint_filter_fn"]

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
_FRAMES_PER_SECOND = 100


class ASTFrontend(nn.Module):
    """Waveform ``[B, N]`` at 16 kHz -> normalised fbank ``[B, 1, n_mels, target_frames]`` (AST's input, transposed)."""

    def __init__(
        self,
        target_frames: int = 1024,
        n_mels: int = 128,
        sample_rate: int = 16000,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        freqm: int = 48,
        timem: int = 192,
    ) -> None:
        super().__init__()
        self.fbank = KaldiFbank(sample_rate=sample_rate, n_mels=n_mels)
        self.target_frames, self.mean, self.std = target_frames, mean, std
        self.freqm, self.timem = freqm, timem

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        fbank = self.fbank(waveform - waveform.mean(dim=-1, keepdim=True))
        frames = fbank.shape[1]
        if frames > self.target_frames:
            raise TeacherInputError(
                f"{frames} fbank frames exceed AST's {self.target_frames}; pass the waveform to the teacher's "
                "forward(), which windows long inputs"
            )
        spec = nn.functional.pad(fbank, (0, 0, 0, self.target_frames - frames)).transpose(1, 2)
        if self.training:
            spec = mask_along_axis(spec, self.freqm, axis=1)
            spec = mask_along_axis(spec, self.timem, axis=2)
        return ((spec - self.mean) / (2 * self.std)).unsqueeze(1)


class AST(SpectrogramTransformer):
    """AST with its Kaldi fbank frontend.

    Args:
        clip_seconds: context; ``input_tdim`` defaults to ``100 * clip_seconds`` fbank frames (1024 for 10.24 s).
        fstride, tstride: patch strides (10 in the main release; 12, 14, 16 in the ensemble members).
        freqm, timem: SpecAugment mask widths of the frontend in training (AST's AudioSet recipe: 48, 192).
        window_hop_seconds: hop between windows of long inputs (default ``clip_seconds / 4``).
    """

    def __init__(
        self,
        num_classes: int = 527,
        clip_seconds: float = 10.24,
        input_tdim: int | None = None,
        input_fdim: int = 128,
        fstride: int = 10,
        tstride: int = 10,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        freqm: int = 48,
        timem: int = 192,
        window_hop_seconds: float | None = None,
    ) -> None:
        super().__init__(
            num_classes, embed_dim, depth, num_heads, mlp_ratio, patch_size, (fstride, tstride), drop_rate,
            drop_path_rate,
        )
        self.sample_rate, self.clip_seconds = 16000, clip_seconds
        self.window_hop_seconds = window_hop_seconds or clip_seconds / 4
        self.input_tdim = input_tdim or round(clip_seconds * _FRAMES_PER_SECOND)
        self.input_fdim = input_fdim
        self.frontend = ASTFrontend(self.input_tdim, input_fdim, freqm=freqm, timem=timem)
        if self.frontend.fbank.num_frames(self.context_samples) > self.input_tdim:
            raise ValueError(f"clip_seconds={clip_seconds} needs more than input_tdim={self.input_tdim} frames")
        self.grid = (patch_grid(input_fdim, patch_size, fstride), patch_grid(self.input_tdim, patch_size, tstride))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + self.grid[0] * self.grid[1], embed_dim))
        self.init_weights()

    def positional_parameters(self) -> list[nn.Parameter]:
        return [self.pos_embed]

    def min_input_samples(self) -> int:
        """One fbank frame: the frontend pads the fbank to ``input_tdim`` frames, so every input that makes a frame
        fits (and probing would run the whole transformer on its full input for each length tried)."""
        return self.frontend.fbank.frame_length

    def frontend_config(self) -> dict[str, Any]:
        fb = self.frontend.fbank
        return {
            "frontend": "kaldi_fbank",
            "sample_rate": fb.sample_rate,
            "frame_length": fb.frame_length,
            "frame_shift": fb.frame_shift,
            "n_fft": fb.n_fft,
            "window": "hanning",
            "preemphasis": fb.preemphasis,
            "remove_dc_offset": True,
            "dither": 0.0,
            "n_mels": fb.n_mels,
            "fmin": fb.fmin,
            "fmax": fb.fmax,
            "log_floor": "float32 eps",
            "waveform_mean_removed": True,
            "target_frames": self.input_tdim,
            "mean": self.frontend.mean,
            "std": self.frontend.std,
            "normalisation": "(fbank - mean) / (2 * std)",
            "patch_stride": list(self.patch_embed.stride),
            **self.windowing_config(),
        }

    def forward_spectrogram(self, spec: torch.Tensor) -> TeacherOutput:
        """Logits for a normalised fbank batch ``[B, 1, input_fdim, input_tdim]`` from ``self.frontend``."""
        if spec.dim() == 4 and tuple(spec.shape[-2:]) != (self.input_fdim, self.input_tdim):
            raise TeacherInputError(
                f"AST expects spectrograms of {self.input_fdim} x {self.input_tdim}, got {tuple(spec.shape[-2:])}"
            )
        tokens = self.patch_embed(spec).flatten(2).transpose(1, 2)
        special = torch.cat([self.cls_token, self.dist_token], dim=1).expand(tokens.shape[0], -1, -1)
        encoded = self.encode(torch.cat([special, tokens], dim=1) + self.pos_embed)
        return TeacherOutput(self.clip_logits(encoded))


def adapt_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fit an AST ``pos_embed`` to another time grid: cut from the middle or interpolate bilinearly."""
    freq, time = grid
    special, patches = pos_embed[:, :2], pos_embed[:, 2:]
    if patches.shape[1] % freq:
        raise CheckpointError(f"pos_embed with {patches.shape[1]} patch positions does not have {freq} frequency rows")
    old_time, dim = patches.shape[1] // freq, patches.shape[2]
    patches = patches.reshape(1, freq, old_time, dim).permute(0, 3, 1, 2)
    if time < old_time:
        start = old_time // 2 - time // 2
        patches = patches[..., start : start + time]
    else:
        patches = nn.functional.interpolate(patches, size=(freq, time), mode="bilinear", align_corners=False)
    return torch.cat([special, patches.flatten(2).transpose(1, 2)], dim=1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: AST) -> dict[str, torch.Tensor]:
    """Map an official AST checkpoint (``module.v.*``, ``module.mlp_head.*``) or a kd checkpoint to ``model``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(("v.head.", "v.head_dist.")):
            continue
        if key.startswith("v."):
            key = key[2:]
        elif key.startswith("mlp_head."):
            key = "head." + key[len("mlp_head.") :]
        out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape != model.pos_embed.shape:
        out["pos_embed"] = adapt_pos_embed(pos, model.grid)
    return out


def _cfg(file: str, url: str, audioset_map: float, stride: int, **extra: Any) -> dict[str, Any]:
    return {
        "file": file,
        "url": url,
        "origin": "github.com/YuanGongND/ast",
        "paper": "arXiv:2104.01778",
        "dataset": "audioset",
        "num_classes": 527,
        "audioset_map": audioset_map,
        "sample_rate": 16000,
        "fstride": stride,
        "tstride": stride,
        **extra,
    }


_DROPBOX = "https://www.dropbox.com/s"


def _ast(stride: int, kwargs: dict[str, Any]) -> AST:
    return AST(**{"fstride": stride, "tstride": stride, **kwargs})


# every AST entrypoint loads checkpoints through this family's filter
_register = partial(register_teacher, checkpoint_filter=checkpoint_filter_fn)


@_register(
    cfg=_cfg("audioset_10_10_0.4593.pth", f"{_DROPBOX}/ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1", 0.4593, 10)
)
def ast_audioset_10_10_0_4593(**kwargs: Any) -> AST:
    """AST, strides 10/10, weight-averaged (the authors' best single model)."""
    return _ast(10, kwargs)


@_register(
    cfg=_cfg("audioset_10_10_0.4495.pth", f"{_DROPBOX}/1tv0hovue1bxupk/audioset_10_10_0.4495.pth?dl=1", 0.4495, 10)
)
def ast_audioset_10_10_0_4495(**kwargs: Any) -> AST:
    """AST, strides 10/10, ensemble member 1 (no weight averaging)."""
    return _ast(10, kwargs)


@_register(
    cfg=_cfg("audioset_10_10_0.4483.pth", f"{_DROPBOX}/6u5sikl4b9wo4u5/audioset_10_10_0.4483.pth?dl=1", 0.4483, 10)
)
def ast_audioset_10_10_0_4483(**kwargs: Any) -> AST:
    """AST, strides 10/10, ensemble member 2."""
    return _ast(10, kwargs)


@_register(
    cfg=_cfg("audioset_10_10_0.4475.pth", f"{_DROPBOX}/kt6i0v9fvfm1mbq/audioset_10_10_0.4475.pth?dl=1", 0.4475, 10)
)
def ast_audioset_10_10_0_4475(**kwargs: Any) -> AST:
    """AST, strides 10/10, ensemble member 3."""
    return _ast(10, kwargs)


@_register(
    cfg=_cfg("audioset_12_12_0.4467.pth", f"{_DROPBOX}/snfhx3tizr4nuc8/audioset_12_12_0.4467.pth?dl=1", 0.4467, 12)
)
def ast_audioset_12_12_0_4467(**kwargs: Any) -> AST:
    """AST, strides 12/12 (10 x 85 patches)."""
    return _ast(12, kwargs)


@_register(
    cfg=_cfg("audioset_14_14_0.4431.pth", f"{_DROPBOX}/z18s6pemtnxm4k7/audioset_14_14_0.4431.pth?dl=1", 0.4431, 14)
)
def ast_audioset_14_14_0_4431(**kwargs: Any) -> AST:
    """AST, strides 14/14 (9 x 73 patches)."""
    return _ast(14, kwargs)


@_register(
    cfg=_cfg("audioset_16_16_0.4422.pth", f"{_DROPBOX}/mdsa4t1xmcimia6/audioset_16_16_0.4422.pth?dl=1", 0.4422, 16)
)
def ast_audioset_16_16_0_4422(**kwargs: Any) -> AST:
    """AST, strides 16/16 (8 x 64 patches)."""
    return _ast(16, kwargs)


@_register(cfg={
    "origin": "kd: small AST for demos and tests, pretrained by scripts/pretrain_demo_teachers.py",
    "file": "ast_tiny_demo.pt",
    "sha256": "3c387943a61852a2e2f861d66b669d1271e75cbbbae352e469ebf830fe1cc007",
    "pretraining": {**DEMO_PRETRAINING, "epochs": 21,
                    "stages": DEMO_STAGES | {"stage3_best_epoch": 8, "stage4": "--lr 5e-4 --epochs 4",
                                             "stage4_best_epoch": 2},
                    "heldout_accuracy": 0.6908},
    **DEMO_HEAD,
    "num_classes": 10,
    "sample_rate": 16000,
})
def ast_tiny(**kwargs: Any) -> AST:
    """A 1.9 M-parameter AST (dim 192, depth 4); defaults: 1 s clips (100 frames), 10 classes.

    ``create_teacher("ast_tiny", pretrained=True)`` loads the demo release (pretrained on synthetic scenes).
    """
    defaults = {"embed_dim": 192, "depth": 4, "num_heads": 3, "num_classes": 10, "clip_seconds": 1.0,
                "freqm": 16, "timem": 20}
    return _ast(10, {**defaults, **kwargs})
