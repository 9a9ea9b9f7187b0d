"""Consistent teacher views: K augmented versions of each clip that ``kd teach`` labels and ``kd distill`` replays.

Offline distillation stores the teachers' logits of the clean clip, while the student trains on an augmented
one: it is asked to match a function on inputs the teacher never saw. Function matching needs identical views
(Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022). Here the
teachers run once on ``K`` views of every clip, the store keeps each view's logits *and its parameters*, and
the student trains on exactly those views: :func:`apply_view` turns a decoded clip and a view's parameters
into the same samples in ``kd teach`` and in ``kd distill`` (NumPy on the CPU, in both processes' decode path).

A view is four numbers (:data:`PARAMS`): the impulse response convolved in (an index into the sorted files of
the IR folder, ``-1`` for none; device impulse responses after Morocutti et al., 2023), a circular time roll
in seconds, a gain in dB, and a speed factor (the waveform resampled by it, so pitch and tempo move together,
then cut or padded back to the clip's length). They are applied in that order: speed, roll, impulse response,
gain. View 0 is always the clean clip.

Each view is described by one integer, its seed (:func:`view_seeds`: a 24-bit number from the configuration's
seed, the clip id and the view index, ``-1`` for the clean view), from which :func:`draw_view` draws its four
numbers: the store keeps the seed (``view_seed``, exact in its float32 array), 4 bytes a view as CED keeps
(Dinkel et al., "CED: Consistent ensemble distillation for audio tagging", 2023) instead of the parameter
table, so that 40 views a clip cost little beside their logits. A resumed ``kd teach`` draws the same views,
and ``kd distill`` replays what the store says: the stored seeds through :func:`replay_params`, or, in a store
written before seeds (its ``view_param_names`` are :data:`PARAMS`), the stored parameters themselves.
"""
from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from kd.data import AudioError, Event, decode_audio, fit_length
from kd_errors import KdError

__all__ = [
    "KINDS",
    "PARAMS",
    "SEED_PARAMS",
    "ImpulseResponses",
    "ViewConfig",
    "apply_view",
    "draw_view",
    "draw_views",
    "replay_params",
    "view_events",
    "view_seeds",
]

KINDS = ("dir", "roll", "gain", "speed")
PARAMS = ("impulse_response", "roll_seconds", "gain_db", "speed")
SEED_PARAMS = ("view_seed",)  # what a store keeps of each view
CLEAN = np.array([-1.0, 0.0, 0.0, 1.0], np.float32)
CLEAN_SEED = -1
SEED_BITS = 24  # a float32 holds every integer below 2**24 exactly
IR_SUFFIXES = (".wav", ".flac", ".ogg")


class ImpulseResponses:
    """The impulse responses of a folder (sorted by file name), peak-normalised, resampled on demand.

    ``fingerprint`` (sha256 over the files' names and bytes) identifies the set: a store's views name the set
    they were drawn from, and a distillation with another set is refused.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        files = sorted(f for f in self.folder.iterdir() if f.suffix.lower() in IR_SUFFIXES) \
            if self.folder.is_dir() else []
        if not files:
            raise KdError(f"no impulse responses ({', '.join(IR_SUFFIXES)} files) in {self.folder}")
        self.names = [f.name for f in files]
        digest = hashlib.sha256()
        self._raw: list[tuple[np.ndarray, int]] = []
        for f in files:
            blob = f.read_bytes()
            digest.update(f.name.encode() + b"\0" + blob)
            try:
                ir, rate = decode_audio(blob)  # the bytes just hashed: each file read once
            except AudioError as e:  # empty, corrupt, silent or non-finite
                raise KdError(f"impulse response {f}: {e.reason}") from None
            self._raw.append((ir / np.abs(ir).max(), rate))
        self.fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.names)

    def at(self, index: int, sample_rate: int) -> np.ndarray:
        """Response ``index`` at ``sample_rate`` (float32)."""
        return _resampled(self, index, sample_rate)


@lru_cache(maxsize=512)
def _resampled(irs: ImpulseResponses, index: int, sample_rate: int) -> np.ndarray:
    ir, rate = irs._raw[index]
    if rate != sample_rate:
        ir = soxr.resample(ir, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(ir, dtype=np.float32)


@dataclass(frozen=True)
class ViewConfig:
    """How the views of a store were drawn: recorded in the store, checked by every distillation that uses them.

    Attributes:
        count: views per clip (``K``); view 0 is the clean clip.
        kinds: the augmentations drawn, a subset of :data:`KINDS`.
        seed: the seed of the per-clip view generator.
        roll_seconds: maximum circular shift, either way.
        gain_db: maximum gain change, either way.
        speed: maximum relative speed change (factors in ``[1 - speed, 1 + speed]``).
        dir_p: probability that a view of an eligible clip is convolved with an impulse response.
        dir_devices: devices whose clips are eligible (the reference device ``a``, as in the DCASE'23 recipe);
            empty: every clip.
        impulse_responses: file names of the IR set, in index order; ``ir_fingerprint`` its sha256.
    """

    count: int
    kinds: tuple[str, ...]
    seed: int = 0
    roll_seconds: float = 0.25
    gain_db: float = 6.0
    speed: float = 0.1
    dir_p: float = 1.0
    dir_devices: tuple[str, ...] = ("a",)
    impulse_responses: tuple[str, ...] = field(default=())
    ir_fingerprint: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise KdError(f"unknown augmentation(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
        if self.count < 1:
            raise KdError(f"--views must be >= 1, got {self.count}")
        if self.count > 1 and not self.kinds:
            raise KdError("views beyond the clean one need augmentations (--augment dir,roll,gain,speed)")
        if "dir" in self.kinds and not self.impulse_responses:
            raise KdError("--augment dir needs a folder of impulse responses (--dir)")
        if not 0 < self.speed < 1 or self.roll_seconds < 0 or self.gain_db < 0 or not 0 <= self.dir_p <= 1:
            raise KdError("view ranges: speed in (0, 1), roll and gain >= 0, dir probability in [0, 1]")

    @classmethod
    def create(cls, count: int, kinds: Sequence[str], irs: ImpulseResponses | None = None, **ranges: Any) -> ViewConfig:
        kinds = tuple(k.strip() for k in kinds if k.strip())
        if "dir" in kinds and irs is None:
            raise KdError("--augment dir needs a folder of impulse responses (--dir)")
        names, fingerprint = (tuple(irs.names), irs.fingerprint) if irs is not None and "dir" in kinds else ((), None)
        return cls(count=count, kinds=kinds, impulse_responses=names, ir_fingerprint=fingerprint, **ranges)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kinds": list(self.kinds), "dir_devices": list(self.dir_devices),
                "impulse_responses": list(self.impulse_responses)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViewConfig:
        return cls(**{**d, "kinds": tuple(d["kinds"]), "dir_devices": tuple(d["dir_devices"]),
                      "impulse_responses": tuple(d["impulse_responses"])})


def view_seeds(config: ViewConfig, clip_id: str) -> np.ndarray:
    """The ``[K]`` seeds of one clip's views (int64): ``-1`` for view 0 (the clean clip), then 24-bit numbers from
    the configuration's seed, the clip id and the view index, the same in every process and rerun."""
    seeds = [zlib.crc32(f"{config.seed}/{k}/{clip_id}".encode()) % 2**SEED_BITS for k in range(config.count)]
    seeds[0] = CLEAN_SEED
    return np.array(seeds, np.int64)


def draw_view(config: ViewConfig, seed: int, device: str | None) -> np.ndarray:
    """The four parameters (:data:`PARAMS`) of the view with ``seed`` of a clip recorded on ``device``.

    Every view draws all four numbers whether or not its kind is on, so its draws depend only on the seed and the
    ranges; ``-1`` is the clean clip.
    """
    view = CLEAN.copy()
    if seed == CLEAN_SEED:
        return view
    rng = np.random.default_rng(seed)
    use_ir, ir = rng.random() < config.dir_p, rng.integers(max(1, len(config.impulse_responses)))
    roll, gain, speed = rng.uniform(-1, 1, 3)
    if "dir" in config.kinds and use_ir and (not config.dir_devices or device in config.dir_devices):
        view[0] = ir
    if "roll" in config.kinds:
        view[1] = roll * config.roll_seconds
    if "gain" in config.kinds:
        view[2] = gain * config.gain_db
    if "speed" in config.kinds:
        view[3] = 1.0 + speed * config.speed
    return view


def draw_views(config: ViewConfig, clip_id: str, device: str | None) -> np.ndarray:
    """The ``[K, 4]`` parameters (:data:`PARAMS`) of one clip's views; row 0 is the clean clip."""
    return np.stack([draw_view(config, int(seed), device) for seed in view_seeds(config, clip_id)])


def replay_params(config: ViewConfig, stored: np.ndarray, names: Sequence[str], device: str | None) -> np.ndarray:
    """The four parameters of a stored view: drawn again from its seed (``names`` :data:`SEED_PARAMS`), or the
    stored ones of a store written before seeds (``names`` :data:`PARAMS`)."""
    if tuple(names) == SEED_PARAMS:
        return draw_view(config, int(stored[0]), device)
    if tuple(names) == PARAMS:
        return np.asarray(stored, np.float32)
    raise KdError(f"the store describes its views by {', '.join(names)}; this kd replays views described by "
                  f"{SEED_PARAMS[0]} or by {', '.join(PARAMS)}")


def apply_view(audio: np.ndarray, params: np.ndarray, sample_rate: int,
               irs: ImpulseResponses | None = None) -> np.ndarray:
    """The view of a decoded clip (float32 ``[N]`` at ``sample_rate``): speed, roll, impulse response, gain.

    Deterministic NumPy on the CPU: ``kd teach`` and ``kd distill`` get the same samples from the same clip.
    """
    ir, roll, gain_db, speed = (float(p) for p in params)
    x = np.asarray(audio, np.float32)
    n = len(x)
    if speed != 1.0:
        x = fit_length(soxr.resample(x, sample_rate * speed, sample_rate, quality="HQ").astype(np.float32), n)
    if roll != 0.0:
        x = np.roll(x, round(roll * sample_rate))
    if ir >= 0:
        if irs is None:
            raise KdError("this view convolves an impulse response, but no impulse responses were given (--dir)")
        x = _convolve_same_length(x, irs.at(int(ir), sample_rate))
    if gain_db != 0.0:
        x = x * np.float32(10.0 ** (gain_db / 20.0))
    return np.ascontiguousarray(x, dtype=np.float32)


def _convolve_same_length(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """FFT convolution cut to ``len(x)``, rescaled to the input's RMS so the level stays comparable."""
    n = len(x) + len(ir) - 1
    y = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
    rms_in, rms_out = np.sqrt(np.mean(np.square(x, dtype=np.float64))), np.sqrt(np.mean(np.square(y)))
    return (y * (rms_in / max(rms_out, 1e-8))).astype(np.float32)


def view_events(events: Sequence[Event], params: np.ndarray, seconds: float) -> list[Event]:
    """Strong labels of a view: times scaled by the speed change, then rolled circularly within the clip."""
    _, roll, _, speed = (float(p) for p in params)
    out = []
    for e in events:
        onset, offset = min(e.onset / speed, seconds), min(e.offset / speed, seconds)
        if offset <= onset:
            continue
        onset, offset = onset + roll, offset + roll
        shift = np.floor(onset / seconds) * seconds  # bring the onset into [0, seconds)
        onset, offset = onset - shift, offset - shift
        if offset <= seconds:
            out.append(Event(onset, offset, e.label))
        else:  # wraps around the end of the clip
            out += [Event(onset, seconds, e.label), Event(0.0, offset - seconds, e.label)]
    return out
