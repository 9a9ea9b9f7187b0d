"""The settings of ``kd teach`` and what its run reports: :class:`TeachConfig` (the command's options), the
:class:`WorkerJob` the client decides for every worker, each chunk's :class:`ChunkResult` and the run's
:class:`TeachSummary`; the errors that stop a run, and which exceptions are a clip's fault (:data:`DATA_ERRORS`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kd.core.checkpoints import TeacherSpec
from kd.core.views import ViewConfig
from kd.data import AudioError, Dataset, open_dataset
from kd.options import CLIP_CODECS, PRECISIONS, ClipCodec, Precision
from kd_errors import KdError

__all__ = [
    "DATA_ERRORS",
    "MAX_FAILED_FRACTION",
    "ChunkResult",
    "TeachConfig",
    "TeachSummary",
    "TeacherFailed",
    "TooManyFailedClips",
    "WorkerJob",
    "is_data_error",
    "taught_datasets",
]

# What one bad file makes decoders raise while reading, decoding, resampling or cutting it: soundfile
# (LibsndfileError is a RuntimeError), soxr and numpy (ValueError), h5py (OSError). These subclasses of them are
# bugs, never data:
DATA_ERRORS = (AudioError, OSError, EOFError, RuntimeError, ValueError, ArithmeticError, IndexError)
_NEVER_DATA = (NotImplementedError, RecursionError)
MAX_FAILED_FRACTION = 0.05  # kd teach's default --max-failed


def is_data_error(error: BaseException) -> bool:
    """Whether ``error`` is what a bad file makes a decoder raise (the clip is recorded as failed and the job goes
    on), not a bug (which stops the job with its traceback)."""
    return isinstance(error, DATA_ERRORS) and not isinstance(error, _NEVER_DATA)


class TeacherFailed(RuntimeError):
    """A teacher raised on clips that decoded fine: not the clips' fault, so the job stops (the teacher's own
    error, with its traceback, is the ``__cause__``)."""


class TooManyFailedClips(KdError):
    """More of a store's clips failed than ``--max-failed`` allows; what was taught is kept."""


@dataclass(frozen=True)
class TeachConfig:
    dataset: str
    store: str
    teachers: tuple[TeacherSpec, ...]
    split: str | None = None
    codec: ClipCodec = "q8"
    topk: int = 20  # with codec topk: logits kept per clip and view
    batch_size: int = 8
    device: str = "auto"
    precision: Precision = "auto"
    seconds: float | None = None
    chunk_size: int = 256
    workers: int | None = None
    decode_workers: int | None = None
    scheduler: str | None = None
    dashboard: bool = False
    tracking_uri: str | None = None
    views: int = 1
    augment: tuple[str, ...] = ()
    dir_folder: str | None = None
    view_seed: int = 0
    transfer: tuple[str, ...] = ()
    max_failed_fraction: float = MAX_FAILED_FRACTION

    def __post_init__(self) -> None:
        if not self.teachers:
            raise KdError("name at least one --teacher")
        keys = [t.key for t in self.teachers]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise KdError(f"teacher names must be unique in a store; repeated: {', '.join(repeated)} (use ALIAS:NAME)")
        if self.batch_size < 1 or self.chunk_size < 1 or (self.workers is not None and self.workers < 1):
            raise KdError("batch size, chunk size and workers must be >= 1")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise KdError("--decode-workers must be >= 1")
        if self.seconds is not None and not self.seconds > 0:
            raise KdError(f"--seconds must be positive, got {self.seconds}")
        if self.codec not in CLIP_CODECS:
            raise KdError(f"--codec must be one of {', '.join(CLIP_CODECS)}, got {self.codec!r}")
        if self.topk < 1:
            raise KdError(f"--topk must be >= 1, got {self.topk}")
        if self.precision not in PRECISIONS:
            raise KdError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.views > 1 and not self.augment:
            raise KdError(f"--views {self.views} needs augmentations to draw views from (--augment dir,roll,gain,speed)")
        if self.views < 1:
            raise KdError(f"--views must be >= 1, got {self.views}")
        if self.scheduler and self.workers is not None:
            raise KdError("--workers starts a local cluster; with --scheduler the cluster's own workers run the job")
        if not 0 <= self.max_failed_fraction <= 1:
            raise KdError(f"--max-failed is a fraction of the clips, from 0 to 1; got {self.max_failed_fraction:g}")


@dataclass(frozen=True)
class WorkerJob:
    """What the client decided for every worker: the clip length, how clips are fed (``pad_samples``: the fewest
    samples at the decode rate that every teacher takes), the device and precision."""

    seconds: float
    min_seconds: float
    variable: bool
    pad_samples: int
    device: str
    precision: str
    decode_workers: int | None
    views: ViewConfig | None = None


@dataclass
class ChunkResult:
    chunk: int
    clips: int
    written: dict[str, int]
    failures: dict[str, str]
    seconds: float
    device: str = ""
    precision: str = ""
    decode_seconds: float = 0.0  # wall seconds of the decode threads on this chunk's clips, summed
    decode_threads: int = 0


@dataclass
class TeachSummary:
    store: str
    clips: int
    chunks_run: int
    chunks_skipped: int
    written: dict[str, int]
    failures: dict[str, str]
    wall_seconds: float
    store_info: dict[str, Any]
    clip_lengths: dict[str, Any] = field(default_factory=dict)
    fed_as: str = ""
    failure_kinds: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    decode_threads: int = 0  # per worker
    decode_clips_per_s_per_thread: float | None = None  # wall clock, under the run's load
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def failed_fraction(self) -> float:
        """The share of the store's clips without logits (for any teacher)."""
        return len(self.failures) / self.clips if self.clips else 0.0


def taught_datasets(cfg: TeachConfig, data: Dataset) -> list[Dataset]:
    """The split to teach and the transfer sets (labels dropped) that join it in the store."""
    return [data, *(open_dataset(spec).unlabelled() for spec in cfg.transfer)]
