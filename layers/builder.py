"""Building a registered model and loading a checkpoint into it: one path for teachers and students.

timm's ``build_model_with_cfg`` in small: the registry entry's function builds the model from constructor
overrides, the entry's ``cfg`` is attached as ``model.cfg``, and a checkpoint (a path or a state dict) goes
through the family's ``checkpoint_filter`` named in the entry, then loads with strict key and shape matching.
One policy, ``fresh_classifiers``, says where the model's classifier layers (``model.classifier_names``: the
modules sized by ``num_classes``) may keep their fresh initialisation instead of matching the checkpoint:

* ``"never"``: every key and shape must match;
* ``"resized"``: classifier layers whose shapes differ from the checkpoint's stay fresh (a checkpoint trained
  on another label set, fine-tuned on this one);
* ``"resized_or_missing"``: also classifier layers that the checkpoint lacks (the frame head of a frame-wise
  teacher started from a clip-level release); the checkpoint's classifier layers that the model does not
  build are dropped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import nn

from .checkpoint import CheckpointError, CheckpointFilter, load_checkpoint, load_state_dict_strict, unwrap_state_dict
from .registry import RegistryEntry

__all__ = ["Checkpoint", "FreshClassifiers", "build_model"]

Checkpoint = str | os.PathLike | Mapping[str, torch.Tensor]
FreshClassifiers = Literal["never", "resized", "resized_or_missing"]
FRESH_CLASSIFIERS = get_args(FreshClassifiers)

M = TypeVar("M", bound=nn.Module)


def build_model(
    entry: RegistryEntry[M],
    checkpoint: Checkpoint | None = None,
    *,
    fresh_classifiers: FreshClassifiers = "never",
    **kwargs: Any,
) -> M:
    """Build ``entry``'s model with constructor overrides ``kwargs``; load ``checkpoint`` into it if given.

    Args:
        checkpoint: a path (an official release file or a checkpoint saved from this model) or a state dict,
            mapped by the entry's ``checkpoint_filter`` and loaded strictly.
        fresh_classifiers: where classifier layers may keep their fresh initialisation (see the module docstring).

    Raises:
        CheckpointError: the entry has no filter, or the checkpoint cannot be read or does not match (naming
            the missing and unexpected keys and the shape differences).
    """
    if fresh_classifiers not in FRESH_CLASSIFIERS:
        raise ValueError(f"fresh_classifiers must be one of {FRESH_CLASSIFIERS}, got {fresh_classifiers!r}")
    if checkpoint is not None and entry.checkpoint_filter is None:
        raise CheckpointError(f"{entry.name} was registered without a checkpoint_filter: it cannot load a checkpoint")
    model = entry.fn(**kwargs)
    model.cfg = dict(entry.cfg)
    if checkpoint is not None:
        if isinstance(checkpoint, Mapping):
            state_dict, source = unwrap_state_dict(checkpoint), "state dict"
        else:
            state_dict, source = load_checkpoint(checkpoint), os.fspath(checkpoint)
        filter_fn = _with_fresh_classifiers(entry.checkpoint_filter, fresh_classifiers)
        load_state_dict_strict(model, state_dict, filter_fn=filter_fn, source=source)
    return model


def _with_fresh_classifiers(family_filter: CheckpointFilter, policy: FreshClassifiers) -> CheckpointFilter:
    """``family_filter``, then the model's own (fresh) classifier entries put in where ``policy`` allows."""
    if policy == "never":
        return family_filter

    def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        out = dict(family_filter(state_dict, model))
        prefixes = tuple(f"{name}." for name in model.classifier_names)
        own = model.state_dict()
        for key, value in own.items():
            if not key.startswith(prefixes):
                continue
            if key not in out:
                if policy == "resized_or_missing":
                    out[key] = value
            elif tuple(out[key].shape) != tuple(value.shape):
                out[key] = value
        if policy == "resized_or_missing":
            out = {k: v for k, v in out.items() if k in own or not k.startswith(prefixes)}
        return out

    return filter_fn
