"""``kd demo-data``: small synthetic datasets in the exact TAU22, AudioSet-HDF5 and AudioSet-Strong layouts.

They exist so that the quick start and the tests run end to end in minutes on a laptop CPU, and so that what they
measure means something: the tasks are learnable (a small CNN gets well above chance) but not trivial.

* ``asc`` (TAU22 layout, 44.1 kHz, 1 s clips): 10 scenes built from shared ingredients (traffic rumble, engine
  harmonics, babble, birds, footsteps, chimes, hiss, brake squeal, room reverberation) in scene-specific but
  overlapping proportions; each recording location has its own variant, and train/evaluate are split by location
  as in TAU22. Every clip is "recorded" through a simulated device (:class:`kd.demo.synth.DeviceResponse`):
  ``a`` nearly flat, ``b``/``c`` coloured, ``s1``-``s6`` coloured and compressed. The training split holds devices
  a, b, c, s1-s3 (a most often); the evaluate split all nine, evenly, so ``s4``-``s6`` are unseen. As in TAU22,
  some clips of other devices are parallel recordings of a device-``a`` segment (same name but the device suffix).
  ``split_setup/split5.csv`` ... ``split100.csv`` are DCASE'24's data-efficient training subsets (5 ... 100 % of
  each scene's training clips, nested), so ``--split split25`` works as on the challenge's data.
* ``tagging`` (AudioSet-HDF5 layout: mp3 bytes, packbits targets, ``metadata/class_labels_indices.csv``; 32 kHz):
  mixtures of 1-4 of 10 synthetic sound classes (with MIDs ``/t/kd00001``...) at random SNRs on noise beds,
  classes drawn with a mild long tail like AudioSet's.
* ``sed`` (AudioSet-Strong layout: strong TSVs with onsets/offsets, ``mid_to_display_name.tsv``, FLAC audio named
  by segment id; 32 kHz): the same sound classes as events on noise beds.

Devices are the same for every seed; clips, locations and mixtures follow the seed.
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import os
import string
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

from kd.data import DatasetError
from kd.data.tau22 import SUBSET_PERCENTS
from kd.demo import synth

__all__ = [
    "ASC_DEVICES", "DEMO_DEFAULTS", "SCENES", "SOUND_CLASSES", "make_demo_data", "new_location", "record_scene",
    "render_scene",
]

DEMO_DEFAULTS = {
    "asc": {"clips": 600, "seconds": 1.0, "sample_rate": 44100},
    "tagging": {"clips": 400, "seconds": 3.0, "sample_rate": 32000},
    "sed": {"clips": 300, "seconds": 4.0, "sample_rate": 32000},
}
EVAL_FRACTION = {"asc": 0.3, "tagging": 0.25, "sed": 0.25}
MIN_CLIPS = {"asc": 20, "tagging": 2, "sed": 2}
MIN_REASON = {"asc": "every scene in the training split", "tagging": "one per split", "sed": "one per split"}
MIN_TRAIN_CLIPS = {"asc": 10, "tagging": 1, "sed": 1}  # asc: a split of 10 clips holds every scene
PARALLEL_JOBS_PER_PROCESS = 100  # a clip takes ~30 ms to render and write, a spawned writer ~0.5 s to start

# --- acoustic scenes ---------------------------------------------------------------------------------------------

CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna")
# Component levels in dB (absent components are only ever faint distractors); "room" is the RT60 in seconds.
SCENES: dict[str, dict[str, float]] = {
    "airport": {"babble": -6, "hiss": -12, "chimes": -15, "rumble": -14, "steps": -20, "room": 1.0},
    "bus": {"engine": -4, "rumble": -6, "babble": -15, "hiss": -18},
    "metro": {"rumble": -3, "squeal": -13, "engine": -11, "hiss": -12},
    "metro_station": {"babble": -8, "rumble": -9, "squeal": -18, "chimes": -18, "steps": -18, "room": 1.3},
    "park": {"birds": -7, "hiss": -15, "rumble": -17, "babble": -22},
    "public_square": {"babble": -8, "birds": -15, "rumble": -11, "steps": -15},
    "shopping_mall": {"babble": -6, "chimes": -11, "hiss": -14, "steps": -19, "room": 0.8},
    "street_pedestrian": {"babble": -8, "steps": -9, "rumble": -12, "birds": -21},
    "street_traffic": {"rumble": -2, "engine": -10, "hiss": -13, "steps": -24},
    "tram": {"rumble": -6, "engine": -10, "squeal": -12, "babble": -17},
}
COMPONENTS = ("rumble", "engine", "babble", "birds", "steps", "chimes", "hiss", "squeal")
ENGINE_F0 = {"bus": (40, 70), "metro": (90, 140), "tram": (150, 300), "street_traffic": (25, 60)}
SWELL_DEPTH = {"street_traffic": 0.7, "street_pedestrian": 0.4, "public_square": 0.4}
TRAIN_DEVICES = ("a", "b", "c", "s1", "s2", "s3")
ASC_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
TRAIN_DEVICE_SHARE = {"a": 0.4, "b": 0.12, "c": 0.12, "s1": 0.12, "s2": 0.12, "s3": 0.12}
EVAL_DEVICE_ORDER = ("a", "s4", "b", "s5", "c", "s6", "s1", "s2", "s3")  # unseen ones early: tiny sets have them
DEVICE_SEED = 20220301


def device_response(name: str, sample_rate: int) -> synth.DeviceResponse:
    """The simulated device ``name`` (the same for every seed)."""
    rng = np.random.default_rng([DEVICE_SEED, zlib.crc32(name.encode())])
    strength = 0.05 if name == "a" else (0.55 if name in ("b", "c") else rng.uniform(0.75, 1.0))
    return synth.DeviceResponse(rng, sample_rate, strength, compress=name.startswith("s"))


@dataclass
class _Location:
    scene: str
    city: str
    number: int
    split: str
    levels: dict[str, float]
    params: dict[str, float]
    segments: list[tuple[int, int, set[str]]] = field(default_factory=list)  # (segment, subsegment, devices)


def new_location(rng: np.random.Generator, scene: str, number: int, split: str = "train") -> _Location:
    """A recording location of ``scene``: its component levels and source parameters drawn from ``rng``."""
    levels = {c: SCENES[scene][c] + rng.normal(0, 3) for c in COMPONENTS if c in SCENES[scene]}
    low, high = ENGINE_F0.get(scene, (50, 200))
    params = {
        "rumble_slope": rng.uniform(-8, -3), "rumble_lowpass": rng.uniform(300, 1500),
        "swell": SWELL_DEPTH.get(scene, 0.2) * rng.uniform(0.7, 1.3), "engine_f0": rng.uniform(low, high),
        "talkers": rng.integers(2, 9), "syllable_hz": rng.uniform(3, 5), "bird_rate": rng.uniform(1, 5),
        "step_rate": rng.uniform(1.5, 2.5), "chime_hz": rng.uniform(300, 900), "hiss_slope": rng.uniform(-3, 0),
        "squeal_hz": rng.uniform(2000, 5000), "rt60": SCENES[scene].get("room", 0.0) * rng.uniform(0.7, 1.3),
    }
    return _Location(scene, str(rng.choice(CITIES)), number, split, levels, params)


def _component(rng: np.random.Generator, name: str, p: dict[str, float], n: int, sr: int) -> np.ndarray:
    if name == "rumble":
        x = synth.colored_noise(rng, n, sr, p["rumble_slope"], p["rumble_lowpass"])
        return x * synth.random_envelope(rng, n, sr, 1.0, p["swell"])
    if name == "engine":
        return synth.harmonic_tone(rng, n, sr, p["engine_f0"] * rng.uniform(0.95, 1.05), 10, 4.0, 0.02)
    if name == "babble":
        return synth.babble(rng, n, sr, p["syllable_hz"], int(p["talkers"]))
    if name == "birds":
        return synth.chirps(rng, n, sr, p["bird_rate"], 2000, 7000)
    if name == "steps":
        return synth.transients(rng, n, sr, p["step_rate"], 100, 2000, 0.015)
    if name == "chimes":
        x = np.zeros(n, dtype=np.float32)
        for _ in range(rng.integers(1, 4)):
            f0 = p["chime_hz"] * 2 ** (rng.choice([0, 4, 7, 12]) / 12)
            note = synth.harmonic_tone(rng, n, sr, f0, 3, 10.0, 0.0) * np.exp(-np.arange(n) / (0.25 * sr))
            synth.add_at(x, note, int(rng.integers(-n // 2, n)))
        return x / synth.rms(x) if x.any() else x
    if name == "hiss":
        return synth.colored_noise(rng, n, sr, p["hiss_slope"])
    if name == "squeal":
        tone = synth.harmonic_tone(rng, n, sr, p["squeal_hz"], 2, 12.0, 0.03)
        return tone * synth.random_envelope(rng, n, sr, 1.5, 0.95)
    raise ValueError(name)


def render_scene(location: _Location, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One clean clip of a location: its components at jittered levels, a faint distractor, its room."""
    levels = {c: level + rng.normal(0, 2.5) for c, level in location.levels.items()}
    distractor = rng.choice([c for c in COMPONENTS if c not in levels])
    levels[str(distractor)] = rng.uniform(-26, -15)
    x = np.zeros(n, dtype=np.float32)
    for name, level in levels.items():
        x += _component(rng, name, location.params, n, sr) * np.float32(10 ** (level / 20))
    if location.params["rt60"] > 0:
        x = synth.reverberate(rng, x, sr, location.params["rt60"], wet=0.5)
    return x / synth.rms(x)


def record_scene(location: _Location, device: synth.DeviceResponse, key: list[int], device_key: int, n: int,
                 sr: int) -> np.ndarray:
    """One demo recording: the segment ``key`` of ``location`` rendered, recorded through ``device`` (its
    self-noise drawn from ``key + [device_key]``) and set to a level between -32 and -22 dB RMS."""
    clean = render_scene(location, np.random.default_rng(key), n, sr)
    recorded = device(np.random.default_rng(key + [device_key]), clean)
    level = 10 ** (np.random.default_rng(key + [100]).uniform(-32, -22) / 20)
    return _limit(recorded / synth.rms(recorded) * level)


def _write_recording(path: Path, location: _Location, device: synth.DeviceResponse, key: list[int],
                     device_key: int, n: int, sr: int) -> None:
    sf.write(path, record_scene(location, device, key, device_key, n, sr), sr, subtype="PCM_24")


def _in_parallel(write: Callable[..., None], jobs: list[tuple]) -> None:
    """``write(*job)`` for every job, on every core once there are enough jobs to repay starting the processes
    (about half a second each). Each clip draws from its own seeded generators, so the files are the same
    whichever process writes them."""
    workers = min(os.cpu_count() or 1, len(jobs) // PARALLEL_JOBS_PER_PROCESS)
    if workers < 2:
        for job in jobs:
            write(*job)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in pool.map(write, *zip(*jobs), chunksize=16):
            pass


def _split_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``total * share`` so the counts add up to ``total``."""
    raw = {k: total * s / sum(shares.values()) for k, s in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _asc_recordings(rng: np.random.Generator, clips: int, n_eval: int) -> list[tuple[_Location, int, int, str]]:
    per_split = {
        "train": _split_counts(clips - n_eval, TRAIN_DEVICE_SHARE),
        "eval": {d: n_eval // 9 + (i < n_eval % 9) for i, d in enumerate(EVAL_DEVICE_ORDER)},
    }
    scenes = list(SCENES)
    n_locations = max(3, round(clips / len(scenes) / 6))
    n_eval_loc = min(n_locations - 2, max(1, round(n_locations * n_eval / clips)))  # about 6 clips a location
    locations: dict[tuple[str, str], list[_Location]] = {}
    number = 0
    for scene in scenes:
        for i in range(n_locations):
            split = "eval" if i < n_eval_loc else "train"
            locations.setdefault((scene, split), []).append(new_location(rng, scene, number, split))
            number += 1
    recordings = []
    for split, counts in per_split.items():
        # one round-robin over the scenes through each split's device blocks: every device gets a balanced share
        # of scenes, and a split of at least 10 clips holds every scene
        k = int(rng.integers(len(scenes)))
        for device, count in counts.items():
            for _ in range(count):
                scene = scenes[k % len(scenes)]
                k += 1
                loc = locations[(scene, split)][int(rng.integers(len(locations[(scene, split)])))]
                reusable = [s for s in loc.segments if device not in s[2]]
                if reusable and rng.random() < 0.5:
                    segment = reusable[int(rng.integers(len(reusable)))]
                else:
                    count_so_far = len(loc.segments)
                    segment = (count_so_far // 10, count_so_far % 10, set())
                    loc.segments.append(segment)
                segment[2].add(device)
                recordings.append((loc, segment[0], segment[1], device))
    return recordings


def _write_tau22(out: Path, clips: int, n_eval: int, seed: int, seconds: float) -> dict:
    sr = DEMO_DEFAULTS["asc"]["sample_rate"]
    n = round(seconds * sr)
    rng = np.random.default_rng([seed, 0])
    devices = {d: device_response(d, sr) for d in ASC_DEVICES}
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, str]]] = {"train": [], "eval": []}
    scenes = list(SCENES)
    recordings = []
    for loc, segment, sub, device in _asc_recordings(rng, clips, n_eval):
        key = [seed, 1, scenes.index(loc.scene), loc.number, segment, sub]
        filename = f"audio/{loc.scene}-{loc.city}-{loc.number}-{segment}-{sub}-{device}.wav"
        recordings.append((out / filename, loc, devices[device], key, 1 + ASC_DEVICES.index(device), n, sr))
        rows[loc.split].append({"filename": filename, "scene_label": loc.scene,
                                "identifier": f"{loc.city}-{loc.number}", "source_label": device})
    _in_parallel(_write_recording, recordings)
    meta = sorted(rows["train"] + rows["eval"], key=lambda r: r["filename"])
    _write_tsv(out / "meta.csv", ["filename", "scene_label", "identifier", "source_label"], meta)
    setup = out / "evaluation_setup"
    setup.mkdir(exist_ok=True)
    for split, name in (("train", "fold1_train.csv"), ("eval", "fold1_evaluate.csv")):
        _write_tsv(setup / name, ["filename", "scene_label"], sorted(rows[split], key=lambda r: r["filename"]))
    _write_tsv(setup / "fold1_test.csv", ["filename"], sorted(rows["eval"], key=lambda r: r["filename"]))
    subsets = _write_subsets(out / "split_setup", rows["train"], np.random.default_rng([seed, 5]))
    return {
        "spec": f"tau22:{out}", "sample_rate": sr, "classes": scenes,
        "splits": {"train": len(rows["train"]), "eval": len(rows["eval"]), **subsets},
        "devices": {"seen": list(TRAIN_DEVICES), "unseen": [d for d in ASC_DEVICES if d not in TRAIN_DEVICES]},
    }


def _write_subsets(folder: Path, train: list[dict[str, str]], rng: np.random.Generator) -> dict[str, int]:
    """DCASE'24's data-efficient training subsets as its split files (``split5.csv`` ... ``split100.csv``): each
    scene's training clips in one random order, the first ``p`` % of them (at least one) in ``split<p>``, so
    every subset holds every scene and lies within the larger ones. Returns the clips per subset."""
    folder.mkdir(exist_ok=True)
    by_scene: dict[str, list[dict[str, str]]] = {}
    for row in sorted(train, key=lambda r: r["filename"]):
        by_scene.setdefault(row["scene_label"], []).append(row)
    orders = {scene: [rows[i] for i in rng.permutation(len(rows))] for scene, rows in by_scene.items()}
    counts = {}
    for percent in SUBSET_PERCENTS:
        subset = [row for rows in orders.values() for row in rows[: max(1, round(len(rows) * percent / 100))]]
        _write_tsv(folder / f"split{percent}.csv", ["filename", "scene_label"],
                   sorted(subset, key=lambda r: r["filename"]))
        counts[f"split{percent}"] = len(subset)
    return counts


# --- sound events (tagging and SED) ------------------------------------------------------------------------------


def _beep(rng, sr):
    f, length = rng.uniform(800, 2500), int(rng.uniform(0.1, 0.3) * sr)
    gap = int(rng.uniform(0.05, 0.15) * sr)
    one = synth.sweep(length, sr, f, f, fade=0.05)
    return np.concatenate([np.concatenate([one, np.zeros(gap, np.float32)]) for _ in range(rng.integers(1, 4))])


def _whistle(rng, sr):
    n, f = int(rng.uniform(0.3, 1.2) * sr), rng.uniform(1500, 4000)
    vibrato = 1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 7) * np.arange(n) / sr)
    return (np.sin(2 * np.pi * np.cumsum(f * vibrato) / sr) * np.hanning(n) ** 0.3).astype(np.float32)


def _chirp(direction: int):
    def make(rng, sr):
        lo, hi = rng.uniform(400, 900), rng.uniform(2000, 4000)
        f1, f2 = (lo, hi) if direction > 0 else (hi, lo)
        return synth.sweep(int(rng.uniform(0.15, 0.5) * sr), sr, f1, f2, fade=0.1)
    return make


def _hum(rng, sr):
    n = int(rng.uniform(0.5, 2.0) * sr)
    return synth.harmonic_tone(rng, n, sr, rng.uniform(80, 250), 8, 5.0, 0.01) * np.hanning(n) ** 0.2


def _knock(rng, sr):
    period, count = int(sr / rng.uniform(4, 8)), int(rng.integers(2, 6))
    out = np.zeros(period * count, dtype=np.float32)
    for k in range(count):
        synth.add_at(out, synth.decaying_burst(rng, period, sr, 150, 1000, 0.02), k * period)
    return out


def _click_train(rng, sr):
    n, rate = int(rng.uniform(0.2, 0.8) * sr), rng.uniform(20, 60)
    out = np.zeros(n, dtype=np.float32)
    for start in np.arange(0, n, sr / rate).astype(int):
        synth.add_at(out, synth.decaying_burst(rng, int(0.01 * sr), sr, 2000, 8000, 0.002), start)
    return out


def _noise_burst(rng, sr):
    n, low = int(rng.uniform(0.2, 0.8) * sr), rng.uniform(300, 2000)
    return synth.band_noise(rng, n, sr, low, low * rng.uniform(2, 6)) * np.exp(-np.arange(n) / (0.3 * n))


def _siren(rng, sr):
    n, rate = int(rng.uniform(0.8, 2.0) * sr), rng.uniform(0.5, 2.0)
    f = 1000 + 400 * np.sin(2 * np.pi * rate * np.arange(n) / sr + rng.uniform(0, 2 * np.pi))
    return (np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(n) ** 0.2).astype(np.float32)


def _drips(rng, sr):
    n = int(rng.uniform(0.5, 2.0) * sr)
    return synth.transients(rng, n, sr, rng.uniform(30, 100), 3000, 10000, 0.003) * np.hanning(n) ** 0.2


SOUND_CLASSES: list[tuple[str, str, Callable[[np.random.Generator, int], np.ndarray]]] = [
    ("/t/kd00001", "Beep", _beep),
    ("/t/kd00002", "Whistle", _whistle),
    ("/t/kd00003", "Chirp, rising", _chirp(+1)),
    ("/t/kd00004", "Chirp, falling", _chirp(-1)),
    ("/t/kd00005", "Hum", _hum),
    ("/t/kd00006", "Knock", _knock),
    ("/t/kd00007", "Click train", _click_train),
    ("/t/kd00008", "Noise burst", _noise_burst),
    ("/t/kd00009", "Siren", _siren),
    ("/t/kd00010", "Drips", _drips),
]
CLASS_WEIGHTS = np.array([1 / (1 + 0.2 * i) for i in range(len(SOUND_CLASSES))])


def render_events(rng: np.random.Generator, n: int, sr: int, must_have: tuple[int, ...] = ()
                  ) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """A noise bed with 1-4 sound classes (1-2 instances each, plus ``must_have``) at -3..12 dB SNR.

    Returns:
        The audio and its events ``(onset, offset, class)`` in seconds.
    """
    bed = synth.colored_noise(rng, n, sr, rng.uniform(-6, -1)) * synth.random_envelope(rng, n, sr, 0.5, 0.5)
    bed = bed + 0.3 * synth.babble(rng, n, sr, 4.0, 2) * (rng.random() < 0.3)
    x = bed / synth.rms(bed)
    count = min(4, 1 + rng.poisson(0.7))
    drawn = rng.choice(len(SOUND_CLASSES), count, replace=False, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())
    chosen = list(must_have) + [int(c) for c in drawn if c not in must_have][: max(0, count - len(must_have))]
    events = []
    for label in chosen:
        for _ in range(1 + min(1, rng.poisson(0.4))):
            sig = SOUND_CLASSES[label][2](rng, sr)[:n]
            sig = sig / synth.rms(sig) * 10 ** (rng.uniform(-3, 12) / 20)
            start = int(rng.integers(0, n - len(sig) + 1))
            synth.add_at(x, sig.astype(np.float32), start)
            events.append((round(start / sr, 3), round((start + len(sig)) / sr, 3), int(label)))
    level = 10 ** (rng.uniform(-30, -20) / 20)
    return _limit(x / synth.rms(x) * level), sorted(events)


def _youtube_ids(rng: np.random.Generator, count: int) -> list[str]:
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    ids: dict[str, None] = {}  # insertion-ordered set
    while len(ids) < count:
        ids.setdefault("".join(rng.choice(alphabet, 11)))
    return list(ids)


def _event_clips(task: str, clips: int, n_eval: int, seed: int, seconds: float):
    """Yields ``(split, ytid, index, audio, events)``; every class occurs in every split (so the AudioSet-Strong
    vocabulary, read from the train TSV, is always the 10 classes)."""
    sr = DEMO_DEFAULTS[task]["sample_rate"]
    sizes = {"train": clips - n_eval, "eval": n_eval}
    ids = _youtube_ids(np.random.default_rng([seed, 2]), clips)
    for i, ytid in enumerate(ids):
        split, k = ("eval", i - sizes["train"]) if i >= sizes["train"] else ("train", i)
        must_have = tuple(c for c in range(len(SOUND_CLASSES)) if c % sizes[split] == k)
        rng = np.random.default_rng([seed, 3, i])
        audio, events = render_events(rng, round(seconds * sr), sr, must_have)
        yield split, ytid, i, audio, events


def _write_class_list(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["index", "mid", "display_name"])
        for i, (mid, name, _) in enumerate(SOUND_CLASSES):
            writer.writerow([i, mid, name])


def _mp3_bytes(audio: np.ndarray, sr: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sr, format="MP3", subtype="MPEG_LAYER_III")
    return buffer.getvalue()


def _write_audioset_hdf5(out: Path, clips: int, n_eval: int, seed: int, seconds: float) -> dict:
    if "MP3" not in sf.available_formats():
        raise DatasetError(f"libsndfile {sf.__libsndfile_version__} cannot write MP3 (needs >= 1.1 built with "
                           "mpg123/LAME), and the AudioSet HDF5 layout stores mp3 bytes")
    sr = DEMO_DEFAULTS["tagging"]["sample_rate"]
    rows: dict[str, list[tuple[str, bytes, np.ndarray]]] = {"train": [], "eval": []}
    for split, ytid, _, audio, events in _event_clips("tagging", clips, n_eval, seed, seconds):
        multi_hot = np.zeros(len(SOUND_CLASSES), dtype=bool)
        multi_hot[[e[2] for e in events]] = True
        rows[split].append((f"Y{ytid}.mp3", _mp3_bytes(audio, sr), np.packbits(multi_hot)))
    (out / "mp3").mkdir(parents=True, exist_ok=True)
    for split, stem in (("train", "balanced_train_segments"), ("eval", "eval_segments")):
        with h5py.File(out / "mp3" / f"{stem}_mp3.hdf", "w") as hf:
            n = len(rows[split])
            names = hf.create_dataset("audio_name", shape=(n,), dtype="S20")
            mp3 = hf.create_dataset("mp3", shape=(n,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
            target = hf.create_dataset("target", shape=(n, (len(SOUND_CLASSES) + 7) // 8), dtype=np.uint8)
            for i, (name, data, packed) in enumerate(rows[split]):
                names[i], mp3[i], target[i] = name.encode(), np.frombuffer(data, dtype=np.uint8), packed
    _write_class_list(out / "metadata" / "class_labels_indices.csv")
    return {"spec": f"audioset-hdf5:{out}", "sample_rate": sr, "classes": [c[1] for c in SOUND_CLASSES],
            "splits": {s: len(r) for s, r in rows.items()}}


def _write_audioset_strong(out: Path, clips: int, n_eval: int, seed: int, seconds: float) -> dict:
    sr = DEMO_DEFAULTS["sed"]["sample_rate"]
    rows: dict[str, list[dict[str, str]]] = {"train": [], "eval": []}
    for split, ytid, i, audio, events in _event_clips("sed", clips, n_eval, seed, seconds):
        segment_id = f"{ytid}_{1000 * (10 * (i % 30))}"
        folder = out / "audio" / split
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{segment_id}.flac", audio, sr, subtype="PCM_16")
        rows[split] += [{"segment_id": segment_id, "start_time_seconds": f"{onset:.3f}",
                         "end_time_seconds": f"{offset:.3f}", "label": SOUND_CLASSES[label][0]}
                        for onset, offset, label in events]
    for split, split_rows in rows.items():
        _write_tsv(out / f"audioset_{split}_strong.tsv",
                   ["segment_id", "start_time_seconds", "end_time_seconds", "label"], split_rows)
    (out / "mid_to_display_name.tsv").write_text("".join(f"{m}\t{name}\n" for m, name, _ in SOUND_CLASSES))
    return {"spec": f"audioset-strong:{out}", "sample_rate": sr, "classes": [c[1] for c in SOUND_CLASSES],
            "splits": {s: len({r["segment_id"] for r in rows[s]}) for s in rows}}


# --- shared ------------------------------------------------------------------------------------------------------


def _limit(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    top = float(np.max(np.abs(x)))
    return (x * (peak / top) if top > peak else x).astype(np.float32)


def _write_tsv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


WRITERS = {"asc": _write_tau22, "tagging": _write_audioset_hdf5, "sed": _write_audioset_strong}


def make_demo_data(out: str | Path, task: str, clips: int | None = None, seed: int = 0,
                   seconds: float | None = None, overwrite: bool = False, eval_clips: int | None = None) -> dict:
    """Writes a synthetic dataset for ``task`` into ``out`` (see the module docstring) and describes it.

    Args:
        out: Target folder; it must be empty or absent unless ``overwrite`` (which replaces files, never deletes).
        task: ``asc`` (TAU22 layout), ``tagging`` (AudioSet HDF5 layout) or ``sed`` (AudioSet-Strong layout).
        clips: Number of clips over both splits (defaults: asc 600, tagging 400, sed 300; at least 20 for asc,
            2 otherwise).
        seed: Everything but the simulated devices follows it; the same seed writes the same audio.
        seconds: Clip length (defaults: asc 1 s like TAU22, tagging 3 s, sed 4 s; AudioSet's own is 10 s).
        overwrite: Allow writing into a non-empty folder.
        eval_clips: Clips in the eval split (default: asc 30 %, tagging and sed 25 % of ``clips``); the rest
            train. A larger eval split measures students more finely without making training slower.

    Returns:
        ``{"task", "path", "spec", "clips", "seed", "seconds", "sample_rate", "classes", "splits": {split: n}}``,
        plus ``"devices": {"seen", "unseen"}`` for asc. ``spec`` is what ``open_dataset`` / ``--dataset`` take.

    Raises:
        DatasetError: unknown task, too few clips (or eval clips out of range), or a non-empty ``out`` without
            ``overwrite``.
    """
    if task not in WRITERS:
        raise DatasetError(f"unknown demo task {task!r}; use asc, tagging or sed")
    defaults = DEMO_DEFAULTS[task]
    clips = defaults["clips"] if clips is None else int(clips)
    seconds = defaults["seconds"] if seconds is None else float(seconds)
    minimum = MIN_CLIPS[task]
    if clips < minimum:
        raise DatasetError(f"{task} demo data needs at least {minimum} clips ({MIN_REASON[task]}), got {clips}")
    n_eval = max(1, round(clips * EVAL_FRACTION[task])) if eval_clips is None else int(eval_clips)
    most = clips - MIN_TRAIN_CLIPS[task]
    if not 1 <= n_eval <= most:
        raise DatasetError(f"{task} demo data of {clips} clips takes 1 to {most} eval clips (the training split "
                           f"needs at least {MIN_TRAIN_CLIPS[task]}), got {n_eval}")
    if seconds <= 0:
        raise DatasetError(f"demo clip length must be positive, got {seconds} s")
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"{out} is not empty; choose an empty folder (or pass overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    info = WRITERS[task](out, clips, n_eval, seed, seconds)
    return {"task": task, "path": str(out), "clips": clips, "seed": seed, "seconds": seconds, **info}
