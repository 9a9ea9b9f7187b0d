"""The codecs of the logit store by name, and the codec a teacher's frames get by default."""
from __future__ import annotations

from typing import Any

from logit_store.codecs import Codec, F16Codec, F32Codec, Q8Codec, QbCodec
from logit_store.errors import StoreError
from logit_store.topk import TopKCodec

__all__ = ["CODECS", "default_frame_codec", "get_codec"]

CODECS: dict[str, type[Codec]] = {c.name: c for c in (F32Codec, F16Codec, Q8Codec, QbCodec, TopKCodec)}


def get_codec(config: str | dict[str, Any]) -> Codec:
    """A codec from its name or its recorded ``config()``."""
    cfg = {"name": config} if isinstance(config, str) else dict(config)
    name = cfg.pop("name", None)
    if name not in CODECS:
        raise StoreError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")
    try:
        return CODECS[name](**cfg)
    except TypeError as e:  # a config key this codec does not take
        raise StoreError(f"codec {name!r} cannot take the settings {cfg}: {e}") from e


def default_frame_codec(codec: str | dict[str, Any]) -> str | dict[str, Any]:
    """The frame codec of a new teacher whose clip codec is ``codec``: ``qb`` for ``q8`` and ``topk`` (frame
    logits are dense), else the same."""
    name = codec if isinstance(codec, str) else codec.get("name")
    return "qb" if name in ("q8", "topk") else codec
