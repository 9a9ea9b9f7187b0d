"""PaSST: the Patchout faSt Spectrogram Transformer and its released AudioSet checkpoints.

Paper: Koutini, Schlüter, Eghbal-zadeh, Widmer, "Efficient Training of Audio Transformers with Patchout",
Interspeech 2022 (arXiv:2110.05069). Origin of the architecture details and release files:
github.com/kkoutini/PaSST (``models/passt.py``) and the PyPI package ``hear21passt``.

What makes PaSST differ from a plain DeiT:

* separate frequency and time positional embeddings, ``freq_new_pos_embed`` ``[1, D, F', 1]`` and
  ``time_new_pos_embed`` ``[1, D, 1, T']``, added to the patch grid; ``new_pos_embed`` ``[1, 2, D]`` is added
  to the cls and dist tokens. The grid sizes of the released files are ``n_mels // fstride`` and
  ``input_tdim // tstride`` (e.g. 12 x 99 for 998 frames at stride 10).
* a shorter input uses the first time embeddings (a random contiguous slice in training); a longer one is
  refused here (the reference cuts the patches; ``Teacher.forward`` windows the waveform instead).
* patchout, in training only: ``s_patchout_t`` random time columns and ``s_patchout_f`` frequency rows of
  the grid are dropped, then ``u_patchout`` random tokens. The releases were trained with 40 and 4 at
  stride 10.
* logits = ``head((cls_out + dist_out) / 2)`` with ``head`` = LayerNorm + Linear; the checkpoints also carry
  a ``head_dist`` that the reference forward never uses (kept, frozen, so they load strictly).

Frame-wise variant (``frame_head=True``): after the final norm, the patch tokens of each time column are
averaged over frequency and a LayerNorm + Linear ``frame_head`` gives frame logits ``[B, T', C]``. One frame
per time patch: ``frames_per_second = sample_rate / (hop_length * tstride)`` (10 fps for 32 kHz, hop 320,
stride 10); frame ``j`` covers spectrogram frames ``[j * tstride, j * tstride + 16)``, i.e. it is centred at
``(j * tstride + 7.5) * hop_length / sample_rate`` seconds (0.075 s + j * 0.1 s). Long inputs are cut into
windows that start every ``T'_context * tstride * hop_length`` samples so the concatenated frames keep this
exact grid. The frame variant refuses time and unstructured patchout (they would drop frames).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from layers import CheckpointError, MelSTFT

from ._base import TeacherInputError, TeacherOutput
from ._registry import DEMO_HEAD, DEMO_PRETRAINING, DEMO_STAGES, register_teacher
from ._vit import SpectrogramTransformer, patch_grid

__all__ = ["PaSST", "checkpoint_filter_fn"]

_RELEASES = "https://github.com/kkoutini/PaSST/releases/download"


class PaSST(SpectrogramTransformer):
    """PaSST with its mel frontend (``layers.MelSTFT``: 32 kHz, n_fft 1024, window 800, hop 320, 128 mels).

    Args:
        num_classes: classes of the clip head (and frame head).
        clip_seconds: context of one forward pass; longer waveforms are windowed by ``forward``.
        input_tdim: spectrogram frames the time positional embedding was made for (the authors' 998 for 10 s);
            defaults to the frames of ``clip_seconds``.
        stride: (frequency, time) stride of the 16x16 patches.
        s_patchout_t, s_patchout_f, u_patchout: patchout sizes (training only).
        frame_head: add the frame-wise head (see the module docstring).
        freqm, timem: SpecAugment mask widths of the frontend in training.
        window_hop_seconds: hop between windows of long inputs (default ``clip_seconds / 4``: hear21passt's 2.5 s).
    """

    classifier_names = ("head", "head_dist", "frame_head")

    def __init__(
        self,
        num_classes: int = 527,
        clip_seconds: float = 10.0,
        input_tdim: int | None = None,
        sample_rate: int = 32000,
        n_mels: int = 128,
        n_fft: int = 1024,
        win_length: int = 800,
        hop_length: int = 320,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        stride: tuple[int, int] = (10, 10),
        s_patchout_t: int = 0,
        s_patchout_f: int = 0,
        u_patchout: int = 0,
        frame_head: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        freqm: int = 48,
        timem: int = 192,
        window_hop_seconds: float | None = None,
    ) -> None:
        super().__init__(
            num_classes, embed_dim, depth, num_heads, mlp_ratio, patch_size, stride, drop_rate, drop_path_rate,
            head_dist=True,
        )
        if frame_head and (s_patchout_t or u_patchout):
            raise ValueError("a frame-wise PaSST cannot use time or unstructured patchout: it would drop frames")
        self.sample_rate, self.clip_seconds = sample_rate, clip_seconds
        self.window_hop_seconds = window_hop_seconds or clip_seconds / 4
        self.frontend = MelSTFT(
            n_mels=n_mels, sample_rate=sample_rate, win_length=win_length, hop_length=hop_length, n_fft=n_fft,
            freqm=freqm, timem=timem,
        )
        self.s_patchout_t, self.s_patchout_f, self.u_patchout = s_patchout_t, s_patchout_f, u_patchout
        self.input_tdim = input_tdim or self.frontend.num_frames(self.context_samples)
        fstride, tstride = self.patch_embed.stride
        freq_positions, time_positions = n_mels // fstride, self.input_tdim // tstride
        if patch_grid(n_mels, patch_size, fstride) != freq_positions:
            raise ValueError(f"{n_mels} mel bins at frequency stride {fstride} do not fill {freq_positions} rows")
        self.context_time_patches = patch_grid(self.frontend.num_frames(self.context_samples), patch_size, tstride)
        if self.context_time_patches > time_positions:
            raise ValueError(
                f"clip_seconds={clip_seconds} gives {self.context_time_patches} time patches, more than the "
                f"{time_positions} positional embeddings of input_tdim={self.input_tdim}"
            )
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, freq_positions, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, 1, time_positions))
        self.frame_head = self._make_head(num_classes) if frame_head else None
        self.frames_per_second = sample_rate / (hop_length * tstride) if frame_head else None
        self.init_weights()

    def positional_parameters(self) -> list[nn.Parameter]:
        return [self.new_pos_embed, self.freq_new_pos_embed, self.time_new_pos_embed]

    def frame_window_hop_samples(self) -> int:
        return self.context_time_patches * self.patch_embed.stride[1] * self.frontend.hop_length

    def num_output_frames(self, num_samples: int) -> int:
        frames = self.frontend.num_frames(num_samples)
        return patch_grid(frames, self.patch_embed.patch_size, self.patch_embed.stride[1])

    def frontend_config(self) -> dict[str, Any]:
        mel = self.frontend
        return {
            "frontend": "mel_stft",
            "sample_rate": mel.sample_rate,
            "n_fft": mel.n_fft,
            "win_length": mel.win_length,
            "hop_length": mel.hop_length,
            "window": "hann_symmetric",
            "preemphasis": 0.97,
            "n_mels": mel.n_mels,
            "mel_scale": "kaldi",
            "fmin": mel.fmin,
            "fmax": mel.fmax,
            "log_offset": 1e-5,
            "normalisation": "(log_mel + 4.5) / 5",
            "input_tdim": self.input_tdim,
            "patch_stride": list(self.patch_embed.stride),
            **self.windowing_config(),
        }

    def _time_positions(self, num_patches: int) -> torch.Tensor:
        available = self.time_new_pos_embed.shape[-1]
        if num_patches > available:
            raise TeacherInputError(
                f"{num_patches} time patches exceed the {available} time positions of this PaSST "
                f"({self.clip_seconds} s context); pass the waveform to forward(), which windows long inputs"
            )
        offset = int(torch.randint(available - num_patches + 1, (1,))) if self.training else 0
        return self.time_new_pos_embed[..., offset : offset + num_patches]

    def _structured_patchout(self, grid: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return grid
        _, _, freq, time = grid.shape
        if self.s_patchout_t:
            grid = grid[..., self._kept_indices(time, self.s_patchout_t, "s_patchout_t", grid.device)]
        if self.s_patchout_f:
            grid = grid[:, :, self._kept_indices(freq, self.s_patchout_f, "s_patchout_f", grid.device)]
        return grid

    def _unstructured_patchout(self, tokens: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.u_patchout):
            return tokens
        return tokens[:, self._kept_indices(tokens.shape[1], self.u_patchout, "u_patchout", tokens.device)]

    @staticmethod
    def _kept_indices(size: int, drop: int, what: str, device: torch.device) -> torch.Tensor:
        if drop >= size:
            raise TeacherInputError(f"{what}={drop} would drop all {size} patches of this input; lower it")
        return torch.randperm(size, device=device)[: size - drop].sort().values

    def forward_spectrogram(self, spec: torch.Tensor) -> TeacherOutput:
        """Logits for a mel batch ``[B, 1, n_mels, frames]`` from ``self.frontend``."""
        grid = self.patch_embed(spec)
        batch, dim, freq, time = grid.shape
        if freq != self.freq_new_pos_embed.shape[2]:
            raise TeacherInputError(
                f"spectrogram gives {freq} frequency patches, this PaSST expects {self.freq_new_pos_embed.shape[2]}"
            )
        grid = grid + (self._time_positions(time) + self.freq_new_pos_embed)
        grid = self._structured_patchout(grid)
        kept_freq, kept_time = grid.shape[2], grid.shape[3]
        tokens = self._unstructured_patchout(grid.flatten(2).transpose(1, 2))
        special = (torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed).expand(batch, -1, -1)
        encoded = self.encode(torch.cat([special, tokens], dim=1))
        frame = None
        if self.frame_head is not None:
            columns = encoded[:, 2:].reshape(batch, kept_freq, kept_time, dim).mean(dim=1)
            frame = self.frame_head(columns)
        return TeacherOutput(self.clip_logits(encoded), frame)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: PaSST) -> dict[str, torch.Tensor]:
    """Map a PaSST release file, a hear21passt wrapper state dict or a kd checkpoint to ``model``'s keys.

    * ``module.`` (DataParallel) and hear21passt's ``net.`` prefixes are removed; the wrapper's frontend
      buffers (``mel.*``, ``device_proxy``) are dropped: the frontend here is rebuilt from its settings.
    * a patch projection stored flat (the authors' oldest files) is reshaped to the convolution kernel.
    * a time positional embedding longer than the model's is cut to its first positions, which is what the
      reference does at inference for inputs shorter than the checkpoint's context.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("mel.") or key == "device_proxy":
            continue
        out[key.removeprefix("net.")] = value
    proj = out.get("patch_embed.proj.weight")
    if proj is not None and proj.dim() < 4:
        out["patch_embed.proj.weight"] = proj.reshape(model.patch_embed.proj.weight.shape)
    time_pos = out.get("time_new_pos_embed")
    wanted = model.time_new_pos_embed.shape[-1]
    if time_pos is not None and time_pos.dim() == 4 and time_pos.shape[-1] > wanted:
        out["time_new_pos_embed"] = time_pos[..., :wanted]
    if "time_new_pos_embed" not in out and "pos_embed" in out:
        raise CheckpointError(
            "checkpoint has a single pos_embed (an ImageNet DeiT or AST file), not PaSST's frequency/time embeddings"
        )
    return out


def _cfg(file: str, release: str, audioset_map: float, **extra: Any) -> dict[str, Any]:
    return {
        "file": file,
        "url": f"{_RELEASES}/{release}/{file}",
        "origin": "github.com/kkoutini/PaSST",
        "paper": "arXiv:2110.05069",
        "dataset": "audioset",
        "num_classes": 527,
        "audioset_map": audioset_map,
        "sample_rate": 32000,
        "train_patchout": {"s_patchout_t": 40, "s_patchout_f": 4},
        **extra,
    }


def _passt(defaults: dict[str, Any], kwargs: dict[str, Any]) -> PaSST:
    return PaSST(**{**defaults, **kwargs})


_S10 = {"stride": (10, 10), "input_tdim": 998}
_S12 = {"stride": (12, 12), "input_tdim": 998}
_S14 = {"stride": (14, 14), "input_tdim": 998}
_S16 = {"stride": (16, 16), "input_tdim": 998}

# every PaSST entrypoint loads checkpoints through this family's filter
_register = partial(register_teacher, checkpoint_filter=checkpoint_filter_fn)


@_register(cfg=_cfg("passt-s-f128-p16-s10-ap.476-swa.pt", "v0.0.1-audioset", 0.476))
def passt_s_swa_p16_128_ap476(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 10, SWA weights (the default hear21passt model)."""
    return _passt(_S10, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s10-ap.4761-swa.pt", "v0.0.2-audioset", 0.4761))
def passt_s_swa_p16_128_ap4761(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 10, SWA weights of a second run."""
    return _passt(_S10, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s10-ap.472.pt", "v0.0.2-audioset", 0.472))
def passt_s_p16_128_ap472(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 10, last weights (no SWA)."""
    return _passt(_S10, kwargs)


@_register(cfg=_cfg("passt-s-kd-ap.486.pt", "v.0.0.9", 0.486))
def passt_s_kd_p16_128_ap486(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 10, trained with knowledge distillation."""
    return _passt(_S10, kwargs)


@_register(cfg=_cfg("passt-l-kd-ap.47.pt", "v.0.0.10", 0.47))
def passt_l_kd_p16_128_ap47(**kwargs: Any) -> PaSST:
    """PaSST-L ("light"): depth 7, stride 10, trained with knowledge distillation."""
    return _passt({**_S10, "depth": 7}, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s12-ap.470.pt", "v0.0.2-audioset", 0.470))
def passt_s_p16_s12_128_ap470(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 12 (10 x 83 positions, 10 x 82 patches for 10 s)."""
    return _passt(_S12, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s12-ap.473-swa.pt", "v0.0.2-audioset", 0.473))
def passt_s_swa_p16_s12_128_ap473(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 12, SWA weights."""
    return _passt(_S12, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s14-ap.469.pt", "v0.0.2-audioset", 0.469))
def passt_s_p16_s14_128_ap469(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 14 (9 x 71 patches)."""
    return _passt(_S14, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s14-ap.471-swa.pt", "v0.0.2-audioset", 0.471))
def passt_s_swa_p16_s14_128_ap471(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 14, SWA weights."""
    return _passt(_S14, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s16-ap.468.pt", "v0.0.2-audioset", 0.468))
def passt_s_p16_s16_128_ap468(**kwargs: Any) -> PaSST:
    """PaSST-S without patch overlap: stride 16 (8 x 62 patches)."""
    return _passt(_S16, kwargs)


@_register(cfg=_cfg("passt-s-f128-p16-s16-ap.473-swa.pt", "v0.0.2-audioset", 0.473))
def passt_s_swa_p16_s16_128_ap473(**kwargs: Any) -> PaSST:
    """PaSST-S, stride 16, SWA weights."""
    return _passt(_S16, kwargs)


@_register(cfg=_cfg("passt-b-f128-p16-s16-ap.459.pt", "v.0.0.7-audioset", 0.459))
def passt_b_f128_p16_s16_ap_459(**kwargs: Any) -> PaSST:
    """PaSST-B (baseline without patchout), stride 16."""
    return _passt(_S16, kwargs)


@_register(cfg=_cfg("passt-u600-f128-p16-s16-ap.460.pt", "v.0.0.7-audioset", 0.460))
def passt_u600_f128_p16_s16_ap_460(**kwargs: Any) -> PaSST:
    """PaSST-U600 (unstructured patchout of 600 tokens in training), stride 16."""
    return _passt(_S16, kwargs)


@_register(
    cfg=_cfg("passt-s-f128-stfthop100-p16-s10-ap.473-swa.pt", "v0.0.3-audioset", 0.473, hop_length=100)
)
def passt_s_swa_f128_stfthop100_p16_s10_ap473(**kwargs: Any) -> PaSST:
    """PaSST-S on a finer STFT: hop 100 (320 frames/s, 3200 frames and 12 x 319 patches for 10 s)."""
    return _passt({"stride": (10, 10), "input_tdim": 3200, "hop_length": 100}, kwargs)


@_register(
    cfg=_cfg("passt-s-f128-stfthop160-p16-s10-ap.473-swa.pt", "v0.0.3-audioset", 0.473, hop_length=160)
)
def passt_s_swa_f128_stfthop160_p16_s10_ap473(**kwargs: Any) -> PaSST:
    """PaSST-S on a finer STFT: hop 160 (200 frames/s, 2000 frames for 10 s)."""
    return _passt({"stride": (10, 10), "input_tdim": 2000, "hop_length": 160}, kwargs)


@_register(cfg=_cfg("passt-s-f128-20sec-p16-s10-ap.474-swa.pt", "v0.0.5", 0.474, clip_seconds=20.0))
def passt_s_f128_20sec_p16_s10_ap474_swa(**kwargs: Any) -> PaSST:
    """PaSST-S with time positions for 20 s (trained on random 10 s slices of them)."""
    return _passt({"stride": (10, 10), "input_tdim": 2000, "clip_seconds": 20.0}, kwargs)


@_register(cfg=_cfg("passt-s-f128-30sec-p16-s10-ap.473-swa.pt", "v0.0.5", 0.473, clip_seconds=30.0))
def passt_s_f128_30sec_p16_s10_ap473_swa(**kwargs: Any) -> PaSST:
    """PaSST-S with time positions for 30 s."""
    return _passt({"stride": (10, 10), "input_tdim": 3000, "clip_seconds": 30.0}, kwargs)


@_register(
    cfg={
        "origin": "frame-wise PaSST-S: the passt_s_swa_p16_128_ap476 trunk with a frame head over time tokens",
        "init_from": "passt_s_swa_p16_128_ap476 (create_teacher(..., checkpoint=<release>, new_heads=True))",
        "sample_rate": 32000,
        "num_classes": 527,
        "frames_per_second": 10.0,
    }
)
def passt_s_frame(**kwargs: Any) -> PaSST:
    """Frame-wise PaSST-S (stride 10, 10 frames/s); its frame head is trained by fine-tuning on strong labels."""
    return _passt({**_S10, "frame_head": True}, kwargs)


_TINY = {
    "embed_dim": 192, "depth": 4, "num_heads": 3, "stride": (10, 10), "num_classes": 10, "freqm": 16, "timem": 20,
}


@_register(cfg={
    "origin": "kd: small PaSST for demos and tests, pretrained by scripts/pretrain_demo_teachers.py",
    "file": "passt_tiny_demo.pt",
    "sha256": "65c043d88e579d2c2376c822d70434b431de9ea2a56c91081fe43e49b30f7be9",
    "pretraining": {**DEMO_PRETRAINING, "epochs": 40,
                    "stages": DEMO_STAGES | {"stage3_best_epoch": 12, "stage4": "--patchout 2 1 --lr 4e-4 --epochs 8",
                                             "stage4_best_epoch": 8},
                    "heldout_accuracy": 0.7317},
    **DEMO_HEAD,
    "num_classes": 10,
    "sample_rate": 32000,
})
def passt_tiny(**kwargs: Any) -> PaSST:
    """A 1.9 M-parameter PaSST (dim 192, depth 4); defaults: 1 s scenes, 10 classes.

    ``create_teacher("passt_tiny", pretrained=True)`` loads the demo release (pretrained on synthetic scenes).
    """
    return _passt({**_TINY, "clip_seconds": 1.0, "s_patchout_t": 2, "s_patchout_f": 1}, kwargs)


@_register(
    cfg={"origin": "small frame-wise PaSST for demos and tests, trained from scratch", "sample_rate": 32000}
)
def passt_tiny_frame(**kwargs: Any) -> PaSST:
    """Frame-wise tiny PaSST (10 frames/s); defaults: 4 s clips, 10 classes."""
    return _passt({**_TINY, "clip_seconds": 4.0, "frame_head": True, "s_patchout_f": 1}, kwargs)
