"""Dataset readers for kd: one :class:`Clip` record for every format, one :func:`open_dataset` entry point.

Formats: AudioSet as PaSST/EfficientAT HDF5 files or as a folder with the official CSVs, AudioSet-Strong,
TAU Urban Acoustic Scenes 2022 Mobile and a generic manifest; see :mod:`kd.data.open`. :mod:`kd.data.demo` writes
small synthetic datasets in the TAU22, AudioSet-HDF5 and AudioSet-Strong layouts.
"""
from .audio import decode_audio, fit_length, load_audio
from .base import ClipLengths, Dataset, read_class_list
from .clip import Clip, Event
from .demo import make_demo_data
from .errors import AudioError, DatasetError
from .open import FORMATS, open_dataset, parse_spec

__all__ = [
    "FORMATS",
    "AudioError",
    "Clip",
    "ClipLengths",
    "Dataset",
    "DatasetError",
    "Event",
    "decode_audio",
    "fit_length",
    "load_audio",
    "make_demo_data",
    "open_dataset",
    "parse_spec",
    "read_class_list",
]
