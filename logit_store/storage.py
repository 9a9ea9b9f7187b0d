"""Storage access of the logit store, all of it through Zarr's own ``Store`` API.

Opening a URL gives a Zarr store (``LocalStore`` for local paths, ``FsspecStore`` for every other URL);
listing keys and summing object sizes go through that store's ``list_prefix`` and ``getsize_prefix``, driven
synchronously on Zarr's event loop, and the key of each chunk object comes from the array's own metadata
(its chunk key encoding). Nothing here builds a storage path by hand or opens a second file-system handle.
"""
from __future__ import annotations

import itertools
import os
from typing import Any

__all__ = [
    "DECODE_ERRORS",
    "chunk_coords_at",
    "chunk_key",
    "compressors",
    "create_codec_array",
    "list_keys",
    "open_group",
    "open_zarr_store",
    "size_of",
    "stored_chunk_keys",
]

LOCAL_SCHEMES = ("file", "local")
# what reading a damaged object raises: Zarr's crc32c codec a ValueError ("Stored and computed checksum do
# not match"), numcodecs' zstd a RuntimeError ("Zstd decompression error"); the logit arrays check crc32c first
DECODE_ERRORS = (ValueError, RuntimeError)


def _local_path(url: str) -> str | None:
    """The file-system path of a local URL (a plain path, ``file://`` or ``local://``), else ``None``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None if "::" in url else url  # ``a::b`` chains file systems: FsspecStore's
    return rest if scheme in LOCAL_SCHEMES else None


def open_zarr_store(url: str, read_only: bool, storage_options: dict[str, Any] | None = None):
    """Zarr's LocalStore for local paths (no async wrapper, creates folders), its FsspecStore for the rest.

    The file system caches no directory listings: other processes add objects to the store all the time, and
    s3fs answers a key's ``info`` (and so zarr's read of it) from a cached listing of its parent, so a process
    that had listed the done records would read the records other processes wrote since as missing.
    """
    from zarr.storage import FsspecStore, LocalStore

    path = _local_path(url)
    if path is not None and not storage_options:
        return LocalStore(os.path.abspath(os.path.expanduser(path)), read_only=read_only)
    options = {"use_listings_cache": False, **(storage_options or {})}
    return FsspecStore.from_url(url, storage_options=options, read_only=read_only)


def open_group(url: str, mode: str, storage_options: dict[str, Any] | None = None):
    """The Zarr group at ``url`` (``mode`` ``"r"`` or ``"r+"``); Zarr's own errors when there is none."""
    import zarr

    return zarr.open_group(open_zarr_store(url, mode == "r", storage_options), mode=mode)


def compressors(level: int = 3):
    """zstd, then a crc32c checksum so that a damaged object fails to decode instead of reading garbage."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=level), Crc32cCodec()]


def create_codec_array(group, name: str, shape, dtype, chunks, level: int = 3, *, fill_value: float = 0,
                       overwrite: bool = False):
    """A codec-valued array: zstd (at ``level``) + crc32c, ``fill_value`` where nothing is written, chunk keys
    ``c/i/j/...``; ``overwrite`` replaces an array of that name (one left by an interrupted creation)."""
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value,
                              serializer="auto", compressors=compressors(level), overwrite=overwrite,
                              chunk_key_encoding={"name": "default", "separator": "/"})


async def _collect(items) -> list[str]:
    return [x async for x in items]


def list_keys(node) -> set[str]:
    """Keys of every stored object under a Zarr group or array, relative to it (``zarr.json``, ``c/0/0``, ...).

    One ``Store.list_prefix`` call (one recursive listing); an absent node lists as empty.
    """
    from zarr.core.sync import sync

    store, path = node.store_path.store, node.store_path.path
    prefix = f"{path}/" if path else ""
    try:
        keys = sync(_collect(store.list_prefix(prefix)))
    except FileNotFoundError:
        return set()
    return {key[len(prefix):] for key in keys if key.startswith(prefix)}


def size_of(node) -> int:
    """Bytes stored under a Zarr group or array (``Store.getsize_prefix``), 0 when nothing is stored."""
    from zarr.core.sync import sync

    store, path = node.store_path.store, node.store_path.path
    try:
        return int(sync(store.getsize_prefix(f"{path}/" if path else "")))
    except FileNotFoundError:
        return 0


def chunk_key(array, coords: tuple[int, ...]) -> str:
    """The key of the chunk object at grid ``coords``, relative to ``array``, by the array's own key encoding."""
    return array.metadata.encode_chunk_key(tuple(int(c) for c in coords))


def chunk_coords_at(array, axis: int, index: int) -> list[tuple[int, ...]]:
    """Grid coordinates of every chunk of ``array`` whose index along ``axis`` is ``index``."""
    return list(itertools.product(*([index] if a == axis else range(n) for a, n in enumerate(array.cdata_shape))))


def stored_chunk_keys(array) -> set[str]:
    """Keys of the chunk objects ``array`` has in storage (one listing; its metadata document excluded)."""
    return list_keys(array) - {"zarr.json"}
