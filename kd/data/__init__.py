"""Dataset readers for kd: one :class:`Clip` record for every format, one :func:`open_dataset` entry point.

Formats: AudioSet as PaSST/EfficientAT HDF5 files or as a folder with the official CSVs, AudioSet-Strong,
TAU Urban Acoustic Scenes 2022 Mobile and a generic manifest; see :mod:`kd.data.open`. (:mod:`kd.demo.data`
writes small synthetic datasets in the TAU22, AudioSet-HDF5 and AudioSet-Strong layouts.)

The readers import no torch, scikit-learn or MLflow (dask and DataLoader workers and ``kd demo-data`` import
them), and nothing of kd but :mod:`kd.tasks`, whose task each dataset carries.
"""
from .audio import AudioStream, decode_audio, fit_length, load_audio
from .base import ClipLengths, Dataset, read_class_list
from .clip import Clip, Event
from .errors import AudioError, DatasetError
from .open import FORMATS, open_dataset, parse_spec

__all__ = [
    "FORMATS",
    "AudioError",
    "AudioStream",
    "Clip",
    "ClipLengths",
    "Dataset",
    "DatasetError",
    "Event",
    "decode_audio",
    "fit_length",
    "load_audio",
    "open_dataset",
    "parse_spec",
    "read_class_list",
]
