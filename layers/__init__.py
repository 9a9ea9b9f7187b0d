"""Shared building blocks of kd's models: the registry, the model builder, safe checkpoint loading, audio frontends.

The bottom of the import graph: ``teachers`` and ``students`` import from here, nothing here imports
from the rest of the project but ``kd_errors`` (the base of the errors a user can cause).
"""
from .builder import Checkpoint, build_model
from .checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, read_checkpoint, sha256_file
from .mel import MelSTFT, kaldi_mel_banks, mask_along_axis
from .registry import Registry, RegistryEntry, UnknownModelError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "MelSTFT",
    "Registry",
    "RegistryEntry",
    "UnknownModelError",
    "build_model",
    "kaldi_mel_banks",
    "load_checkpoint",
    "load_state_dict_strict",
    "mask_along_axis",
    "read_checkpoint",
    "sha256_file",
]
