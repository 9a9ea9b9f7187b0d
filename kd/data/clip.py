"""The one record shape every reader produces: a ``Clip`` with its labels, events and recording context."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Clip", "Event"]


@dataclass(frozen=True)
class Event:
    """A strongly labelled sound event: class ``label`` active from ``onset`` to ``offset`` (seconds)."""

    onset: float
    offset: float
    label: int


@dataclass(frozen=True)
class Clip:
    """One audio clip of a dataset.

    Attributes:
        id: The unique join key (teacher logits are stored and looked up under it).
        source: Path of the audio file, or of the HDF5 file holding it (then ``row`` is set).
        row: Row in the HDF5 file's ``mp3`` dataset; ``None`` for plain files.
        labels: Weak labels: sorted class indices present in the clip (exactly one for scenes).
        labelled: False for a clip whose labels are unknown (a transfer clip, see :meth:`Dataset.unlabelled`):
            it has no hard target at all, which is not the same as a clip known to hold no class.
        events: Strong labels (SED): events with onsets/offsets in seconds.
        device: Recording device id (TAU22: ``a``, ``b``, ``c``, ``s1`` ... ``s6``), if known.
        city: Recording city, if known.
        duration: Length in seconds, if the metadata states it.
        sample_rate: Native sample rate, if the metadata states it (decoding always resamples).
    """

    id: str
    source: str
    row: int | None = None
    labels: tuple[int, ...] = ()
    labelled: bool = True
    events: tuple[Event, ...] = ()
    device: str | None = None
    city: str | None = None
    duration: float | None = None
    sample_rate: int | None = None
