"""Views of a store's clips: the configuration they were drawn from, and each clip's view parameters.

A store with views holds the logits of ``V`` versions of every clip and the ``P`` numbers that describe each
version (``view_params``, ``[N, V, P]`` float32). Views are a property of the clips, shared by every teacher of
the store. The configuration is the caller's JSON dict (``count`` is ``V``; kinds, ranges, seed, impulse
responses and their fingerprint are the caller's business), recorded in the root attributes with the names of
the ``P`` parameters. What a view means (which is clean, how it is applied) belongs to the caller: this module
only stores and checks.

View parameters are written chunk by chunk with the logits of the chunk, by whichever teacher writes it; the
same values again are a no-op, other values are refused (they would change the meaning of logits already
stored under them). Their array is chunked like the clips, so writers of different chunks never share an
object; unwritten rows read as NaN, the fill value.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from logit_store import storage
from logit_store.errors import InvalidLogits, StoreError, ViewMismatch, preview

__all__ = ["ARRAY", "check_config", "check_same", "create_array", "stored_params", "summary", "write_params"]

ARRAY = "view_params"


def check_config(config: dict[str, Any], param_names: Sequence[str] | None) -> tuple[dict[str, Any], list[str]]:
    """A JSON-clean copy of ``config`` and the parameter names, or ``StoreError`` saying what is unusable."""
    if not isinstance(config, dict):
        raise StoreError(f"a view configuration is a dict, got {type(config).__name__}")
    try:
        clean = json.loads(json.dumps(config))
    except (TypeError, ValueError) as e:
        raise StoreError(f"the view configuration must be JSON-serialisable: {e}") from e
    count = clean.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise StoreError(f"the view configuration needs 'count', the views per clip (an integer >= 1), got {count!r}")
    names = [] if param_names is None else list(param_names)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise StoreError(f"view_param_names must name each view parameter once (non-empty strings), got {names!r}")
    return clean, names


def check_same(stored: dict[str, Any] | None, stored_names: Sequence[str] | None, config: dict[str, Any] | None,
               names: Sequence[str] | None, url: str) -> None:
    """``ViewMismatch`` unless ``config`` (and ``names``) are the stored ones (``None``: no views)."""
    if stored is None and config is None:
        return
    if stored is None or config is None:
        have = "no views" if stored is None else f"{stored['count']} views per clip"
        given = "none" if config is None else f"{config['count']} views per clip"
        raise ViewMismatch(f"{url} holds logits of {have}, the job asks for {given}; write a new store")
    old, new = {**stored, "view_param_names": list(stored_names or [])}, {**config, "view_param_names": list(names)}
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        detail = "; ".join(f"{k}: stored {old.get(k)!r}, given {new.get(k)!r}" for k in differ[:3])
        raise ViewMismatch(f"{url} was labelled with other views ({detail}); write a new store")


def create_array(root, num_clips: int, count: int, num_params: int, chunk_size: int):
    """The ``view_params`` array of a store: ``[N, V, P]`` float32, NaN until written, one object per chunk."""
    return storage.create_codec_array(root, ARRAY, (num_clips, count, num_params), np.float32,
                                      (chunk_size, count, num_params), fill_value=np.nan, overwrite=True)


def check_params(x, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as float32 of ``shape``, or ``InvalidLogits`` (wrong shape, NaN/inf)."""
    x = np.asarray(x, np.float32)
    if x.shape != shape:
        raise InvalidLogits(f"view_params has shape {x.shape}, expected {shape}")
    if not np.isfinite(x).all():
        raise InvalidLogits("view_params holds NaN/inf; every view of every clip needs its parameters")
    return x


def stored_params(array, rows: slice) -> np.ndarray | None:
    """The view parameters stored for ``rows`` (one chunk), or ``None`` when none are (absent or damaged)."""
    try:
        got = array[rows]
    except storage.DECODE_ERRORS:
        return None
    return None if np.isnan(got).all() else got


def write_params(array, rows: slice, params: np.ndarray | None, chunk: int, ids: Sequence[str]) -> bool:
    """Store the checked ``params`` of chunk ``chunk`` unless the same are stored; ``True`` if it wrote.

    ``ViewMismatch`` when other values are stored (the chunk's logits were computed on other views);
    ``InvalidLogits`` when ``params`` is ``None`` and nothing is stored yet.
    """
    stored = stored_params(array, rows)
    if stored is None:
        if params is None:
            raise InvalidLogits(f"chunk {chunk} has no view parameters yet: write_chunk needs view_params")
        array[rows] = params
        return True
    if params is not None and not np.array_equal(stored, params):
        bad = [ids[i] for i in np.nonzero((stored != params).reshape(len(params), -1).any(axis=1))[0]]
        raise ViewMismatch(f"chunk {chunk} already holds other view parameters for {len(bad)} clip(s): "
                           f"{preview(bad)}; its logits were computed on those views (nothing was written)")
    return False


def summary(config: dict[str, Any] | None, names: Sequence[str] | None) -> dict[str, Any] | None:
    """What ``info()`` shows of the views: count, kinds, impulse-response fingerprint, parameters, configuration."""
    if config is None:
        return None
    return {"count": config["count"], "kinds": config.get("kinds"), "ir_fingerprint": config.get("ir_fingerprint"),
            "params": list(names or []), "config": config}
