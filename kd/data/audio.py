"""Decoding clips with soundfile (wav/flac/ogg/mp3, from paths or bytes), mono mixdown, soxr resampling, pad/crop.

Every check that makes a clip unusable raises :class:`AudioError` with a short reason, so that callers record
``(clip id, reason)`` and skip the clip instead of feeding a row of zeros to a model. A file at another sample
rate than expected is not an error: it is resampled from the rate its header states.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

__all__ = ["AudioStream", "decode_audio", "fit_length", "load_audio"]


def _open(source: str | Path | bytes, clip_id: str) -> str | io.BytesIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(clip_id, "empty (0 bytes)")
        return io.BytesIO(bytes(source))
    path = Path(source)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(clip_id, f"missing file {path}") from None
    except OSError as e:
        raise AudioError(clip_id, f"unreadable file {path}: {e.strerror}") from None
    if size == 0:
        raise AudioError(clip_id, "empty file (0 bytes)")
    return str(path)


def decode_audio(source: str | Path | bytes, clip_id: str = "") -> tuple[np.ndarray, int]:
    """Decodes a whole file to mono float32 at its native rate.

    Returns:
        ``(samples [N], sample_rate)``; multichannel audio is averaged over channels.

    Raises:
        AudioError: missing, empty, unreadable (corrupt or unknown format), non-finite or all-zero audio.
    """
    handle = _open(source, clip_id)
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except _READ_ERRORS as e:
        raise _unreadable(clip_id, e) from None
    if data.shape[0] == 0:
        raise AudioError(clip_id, "empty (no samples)")
    mono = _mono(data)
    _check_content(mono, clip_id)
    return np.ascontiguousarray(mono), int(rate)


_READ_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError)  # a corrupt or unknown file


def _unreadable(clip_id: str, error: Exception) -> AudioError:
    return AudioError(clip_id, f"unreadable: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


def _mono(data: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` averaged over the channels."""
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def _check_content(x: np.ndarray, clip_id: str, where: str = "") -> None:
    if not np.isfinite(x).all():
        raise AudioError(clip_id, f"non-finite samples{where}")
    if not np.any(x):
        raise AudioError(clip_id, f"silent (all zeros){where}")


def fit_length(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Crops the end off, or pads zeros at the end, to exactly ``num_samples``."""
    if len(x) >= num_samples:
        return x[:num_samples]
    return np.pad(x, (0, num_samples - len(x)))


def load_audio(
    source: str | Path | bytes, sample_rate: int, seconds: float | None = None, clip_id: str = "", *,
    pad: bool = True, min_seconds: float | None = None,
) -> np.ndarray:
    """Decodes, mixes to mono, resamples to ``sample_rate`` (soxr, high quality) and crops/pads to ``seconds``.

    Cropping keeps the beginning of the clip; padding (``pad``, the default) appends zeros; with ``pad=False`` a
    shorter clip keeps its own length. A clip whose kept part is all zeros (e.g. silence followed by sound beyond
    ``seconds``) is rejected like a silent file, and so is one shorter than ``min_seconds`` (before padding), so
    that a truncated file never becomes a clip of mostly zeros.

    Returns:
        float32 ``[round(seconds * sample_rate)]`` (shorter with ``pad=False``; the whole resampled clip when
        ``seconds`` is None).
    """
    x, rate = decode_audio(source, clip_id)
    if min_seconds is not None and len(x) < min_seconds * rate:
        raise AudioError(clip_id, f"too short: {len(x) / rate:.3g} s of audio, under the {min_seconds:.3g} s minimum")
    if rate != sample_rate:
        x = soxr.resample(x, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    if seconds is not None:
        num_samples = round(seconds * sample_rate)
        x = fit_length(x, num_samples) if pad else x[:num_samples]
        _check_content(x, clip_id, f" in the first {seconds:g} s")
    return np.ascontiguousarray(x, dtype=np.float32)


class AudioStream:
    """A file read block by block, mixed to mono and resampled to ``sample_rate`` as it goes (soxr's streaming
    resampler), so that memory stays at a few blocks whatever the file's length.

    Iterating yields float32 blocks of about ``block_seconds``; ``duration`` is the header's length. A file that
    turns out to be silent or to hold non-finite samples raises :class:`AudioError` when its stream reaches the end
    (silence) or the bad block, as :func:`decode_audio` would have.
    """

    def __init__(self, source: str | Path, sample_rate: int, block_seconds: float = 30.0, clip_id: str = "") -> None:
        self.clip_id = clip_id or str(source)
        self.path = _open(source, self.clip_id)
        try:
            info = sf.info(self.path)
        except _READ_ERRORS as e:
            raise _unreadable(self.clip_id, e) from None
        if info.frames == 0:
            raise AudioError(self.clip_id, "empty (no samples)")
        self.native_rate, self.sample_rate = int(info.samplerate), int(sample_rate)
        self.duration = info.frames / info.samplerate
        self.block_frames = max(1, round(block_seconds * self.native_rate))

    def __iter__(self) -> Iterator[np.ndarray]:
        resampler = (soxr.ResampleStream(self.native_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
                     if self.native_rate != self.sample_rate else None)
        heard = False
        try:
            with sf.SoundFile(self.path) as f:
                for block in f.blocks(self.block_frames, dtype="float32", always_2d=True):
                    mono = _mono(block)
                    if not np.isfinite(mono).all():
                        raise AudioError(self.clip_id, "non-finite samples")
                    heard = heard or bool(np.any(mono))
                    out = resampler.resample_chunk(mono) if resampler else mono
                    if len(out):
                        yield np.ascontiguousarray(out, dtype=np.float32)
        except _READ_ERRORS as e:  # a file corrupt past its header
            raise _unreadable(self.clip_id, e) from None
        if resampler:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield np.ascontiguousarray(tail, dtype=np.float32)
        if not heard:
            raise AudioError(self.clip_id, "silent (all zeros)")
