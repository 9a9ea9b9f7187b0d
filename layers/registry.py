"""One generic name -> entrypoint registry, instantiated once for teachers and once for students.

Modelled on timm's ``register_model``/``create_model``: an entrypoint is a function whose name is the
model name; its keyword arguments are the model's overrides; a per-model ``cfg`` dict carries the
metadata a user or a test needs without building the model (sample rate, clip length, checkpoint file
names, the figures published for it); ``checkpoint_filter`` is the family's ``checkpoint_filter_fn``,
through which ``layers.build_model`` loads checkpoints into the model.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kd_errors import KdError

from .checkpoint import CheckpointFilter

__all__ = ["Registry", "RegistryEntry", "UnknownModelError"]

M = TypeVar("M")


class UnknownModelError(KdError):
    """A model name that no entrypoint was registered for."""


@dataclass(frozen=True)
class RegistryEntry(Generic[M]):
    name: str
    fn: Callable[..., M]
    cfg: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_filter: CheckpointFilter | None = None


class Registry(Generic[M]):
    """Maps model names to entrypoints for one kind of model (``"teacher"``, ``"student"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[M]] = {}

    def register(
        self,
        fn: Callable[..., M] | None = None,
        *,
        cfg: Mapping[str, Any] | None = None,
        checkpoint_filter: CheckpointFilter | None = None,
    ):
        """Decorator registering ``fn`` under its own name, with a metadata ``cfg`` and the family's filter.

        A model registered without ``checkpoint_filter`` builds, but refuses checkpoints.
        """

        def add(f: Callable[..., M]) -> Callable[..., M]:
            name = f.__name__
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = RegistryEntry(name, f, dict(cfg or {}), checkpoint_filter)
            return f

        return add(fn) if fn is not None else add

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted, optionally filtered by a shell-style ``pattern``."""
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def get(self, name: str) -> RegistryEntry[M]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names())}"
            raise UnknownModelError(f"unknown {self.kind} {name!r}{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
