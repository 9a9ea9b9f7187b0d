"""Embeddings of any model kd runs, for recordings of any length, in the shape of the HEAR API.

A model's embedding is what its classifier reads: the input of its first classifier layer (``classifier_names``
of the registries), pooled over frequency and time where that is a feature map (CP-Mobile's and CP-ResNet's 1x1
conv heads), per frame where it is a sequence (the frame heads of SED students and frame-wise teachers). Clip
models give one timestamped embedding per window (stamped at the window's centre) and their scene embedding is the
windows' mean, weighted by the audio each holds; frame-wise models give one per frame (overlapping windows
averaged on one frame grid) and their scene embedding is the frames' mean. Exported ``.onnx`` files give the
same tensor, found in the graph as the first input of the classifier's first node.

The HEAR API (``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``, timestamps in
milliseconds) lets the field's representation benchmarks score a student; :func:`embed_files` is ``kd embed``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kd.data import AudioError, AudioStream
from kd.deploy.predict import Predictor, TorchPredictor, collect_audio, open_predictor
from kd.deploy.windows import Windowing, each_window, final_frames
from kd_errors import KdError

__all__ = ["EmbeddingModel", "FileEmbedding", "embed_files", "get_scene_embeddings", "get_timestamp_embeddings",
           "load_model", "write_embeddings"]

Embed = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]  # waveforms -> (scene [B, D], frames [B, T, D])


@dataclass(frozen=True)
class FileEmbedding:
    """One recording's embeddings: ``scene`` ``[D]``, ``embeddings`` ``[T, D]`` at ``timestamps`` ``[T]`` (seconds,
    the centre of each window or frame)."""

    path: str
    scene: np.ndarray
    embeddings: np.ndarray
    timestamps: np.ndarray


class EmbeddingModel(nn.Module):
    """A model ready to embed audio (the HEAR API's model object): ``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``, and the windowing it runs long audio with."""

    def __init__(self, predictor: Predictor, windowing: Windowing, batch_size: int = 16) -> None:
        super().__init__()
        self.predictor, self.windowing, self.batch_size = predictor, windowing, batch_size
        self.sample_rate = predictor.sample_rate
        self.frame_level = predictor.task.frame_level
        self._embed = _embedder(predictor)
        scene, _ = self._embed(np.zeros((1, windowing.window), np.float32))
        self.scene_embedding_size = self.timestamp_embedding_size = scene.shape[-1]

    def embed_blocks(self, path: str, blocks: Iterable[np.ndarray]) -> FileEmbedding:
        """The embeddings of the audio arriving in ``blocks`` (at ``sample_rate``), window by window."""
        if self.frame_level:
            return self._frame_embeddings(path, blocks)
        rate, rows, stamps, weights = self.sample_rate, [], [], []
        for start, valid, scene in each_window(lambda w: self._embed(w)[0], blocks, self.windowing, self.batch_size):
            rows.append(scene)
            stamps.append((start + valid / 2) / rate)
            weights.append(valid)
        embeddings = np.stack(rows).astype(np.float32)
        scene = np.average(embeddings, axis=0, weights=weights).astype(np.float32)
        return FileEmbedding(path, scene, embeddings, np.asarray(stamps))

    def _frame_embeddings(self, path: str, blocks: Iterable[np.ndarray]) -> FileEmbedding:
        fps = self.predictor.frames_per_second
        embeddings = np.concatenate([frames for frames, _ in final_frames(
            lambda w: self._embed(w)[1], blocks, self.windowing, fps, self.timestamp_embedding_size, self.batch_size)])
        return FileEmbedding(path, embeddings.mean(axis=0), embeddings, (np.arange(len(embeddings)) + 0.5) / fps)


def load_model(model_file_path: str = "", device: str = "cpu", window: float | None = None,
               hop: float | None = None, batch_size: int = 16) -> EmbeddingModel:
    """The HEAR API's ``load_model``: a ``kd distill`` or ``kd train-teacher`` checkpoint, a ``kd export`` ``.onnx``
    file or a registered teacher (``NAME`` or ``NAME=CHECKPOINT``), run in windows of ``window`` seconds every
    ``hop`` seconds (defaults: the model's, see :meth:`kd.deploy.windows.Windowing.for_model`)."""
    if not model_file_path:
        raise KdError("load_model needs a model: a checkpoint, an .onnx file or a registered teacher's name")
    predictor = open_predictor(model_file_path, device)
    fps = predictor.frames_per_second if predictor.task.frame_level else None
    return EmbeddingModel(predictor, Windowing.for_model(predictor.sample_rate, predictor.seconds, fps, window, hop),
                          batch_size)


def get_timestamp_embeddings(audio: torch.Tensor, model: EmbeddingModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The HEAR API: ``audio`` ``[n_sounds, n_samples]`` at ``model.sample_rate`` -> embeddings ``[n_sounds, T, D]``
    and their timestamps ``[n_sounds, T]`` in milliseconds (window or frame centres)."""
    files = [model.embed_blocks(str(i), [row]) for i, row in enumerate(_rows(audio))]
    return (torch.from_numpy(np.stack([f.embeddings for f in files])),
            torch.from_numpy(np.stack([f.timestamps * 1000.0 for f in files]).astype(np.float32)))


def get_scene_embeddings(audio: torch.Tensor, model: EmbeddingModel) -> torch.Tensor:
    """The HEAR API: ``audio`` ``[n_sounds, n_samples]`` at ``model.sample_rate`` -> ``[n_sounds, D]``."""
    return torch.from_numpy(np.stack([model.embed_blocks(str(i), [row]).scene for i, row in enumerate(_rows(audio))]))


def _rows(audio: torch.Tensor) -> list[np.ndarray]:
    if audio.dim() != 2:
        raise KdError(f"expected audio [n_sounds, n_samples], got shape {tuple(audio.shape)}")
    return [np.ascontiguousarray(row, dtype=np.float32) for row in audio.detach().cpu().numpy()]


def embed_files(model: EmbeddingModel, inputs: Sequence[str]) -> tuple[list[FileEmbedding], dict[str, str]]:
    """The embeddings of every audio file ``inputs`` name (see :func:`kd.deploy.predict.collect_audio`), each read
    block by block; the files that could not be read, with their reasons, apart."""
    done, failed = [], {}
    for path in collect_audio(inputs):
        try:
            done.append(model.embed_blocks(path, AudioStream(path, model.sample_rate, clip_id=path)))
        except AudioError as e:
            failed[path] = e.reason
    return done, failed


def write_embeddings(embeddings: Sequence[FileEmbedding], out: str | Path, model: str) -> Path:
    """``out.zarr`` (a Zarr group) or ``out.npz``: ``scene`` ``[files, D]``, the files' timestamped embeddings one
    after the other in ``embeddings`` ``[frames, D]`` with ``timestamps`` (seconds), and ``offsets`` ``[files + 1]``
    (file ``i`` owns rows ``offsets[i]:offsets[i + 1]``); the paths and the model in the attributes (zarr) or as
    ``paths`` and ``model`` (npz)."""
    out = Path(out)
    if not embeddings:
        raise KdError("no file could be embedded")
    arrays = {
        "scene": np.stack([e.scene for e in embeddings]).astype(np.float32),
        "embeddings": np.concatenate([e.embeddings for e in embeddings]).astype(np.float32),
        "timestamps": np.concatenate([e.timestamps for e in embeddings]).astype(np.float64),
        "offsets": np.cumsum([0, *(len(e.timestamps) for e in embeddings)]).astype(np.int64),
    }
    paths = [e.path for e in embeddings]
    if out.suffix == ".npz":
        np.savez(out, **arrays, paths=np.asarray(paths), model=np.asarray(model))
        return out
    if out.suffix != ".zarr":
        raise KdError(f"--out {out}: name a .zarr folder or a .npz file")
    import zarr

    group = zarr.open_group(str(out), mode="w")
    for name, array in arrays.items():
        group.create_array(name, data=array)
    group.attrs.update({"paths": paths, "model": model, "timestamps_unit": "seconds"})
    return out


def _embedder(predictor: Predictor) -> Embed:
    """``waveforms -> (scene [B, D], frames [B, T, D] or None)`` for a torch model or an exported file."""
    if isinstance(predictor, TorchPredictor):
        return _torch_embedder(predictor)
    from kd.embed.onnx_graph import onnx_embedder

    return onnx_embedder(predictor)


def _torch_embedder(predictor: TorchPredictor) -> Embed:
    model = predictor.model
    heads = [m for name in model.classifier_names if (m := _submodule(model, name)) is not None]
    if not heads:
        raise KdError(f"{type(model).__name__} names no classifier layer to take an embedding from")

    def embed(waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        seen: list[torch.Tensor] = []
        hooks = [h.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for h in heads]
        try:
            predictor.logits(waveforms)
        finally:
            for hook in hooks:
                hook.remove()
        return pooled(seen)

    return embed


def pooled(seen: Sequence[torch.Tensor | np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """The scene and frame embeddings among what the classifier layers read: a sequence ``[B, T, D]`` is the frames
    (their mean the scene), a feature map ``[B, D, F, T]`` is pooled over frequency and time, ``[B, D]`` is the
    scene."""
    arrays = [t.float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32) for t in seen]
    frames = next((a for a in arrays if a.ndim == 3), None)
    scene = next((a.mean(axis=(2, 3)) if a.ndim == 4 else a for a in arrays if a.ndim in (2, 4)), None)
    if scene is None:
        scene = frames.mean(axis=1)
    return scene, frames


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
