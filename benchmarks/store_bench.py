"""Logit store: size, write speed, shuffled batch reads and target error of each codec, against baselines.

Data: realistic synthetic teacher logits. Clip level is AudioSet-like (200 000 x 527): a per-class prior
between -13 and -6, a per-clip offset, noise, and on average ~2.5 positive classes per clip (Zipf-like class
frequencies) around +2.5. Frame level (2 000 x 250 x 447, AudioSet-Strong's 447 classes at 25 frames/s) is
temporally smooth: per-clip class levels plus a slow AR(1) drift (correlation time ~20 frames, but white
innovations of 0.25 logits every frame) and 1-4 events per clip with soft onsets and offsets.

For each clip codec (f32, f16, q8) the script writes a store chunk by chunk (write MB/s of float32 input),
reads it back in shuffled batches (rows/s), and measures the error of the decoded targets students train on:
max |Δ sigmoid| and the mean KL divergence of softmax at T=1 and T=2 (per clip). Each frame codec (f32, f16,
q8, qb) does the same with a frame-wise teacher (chunks of 64 clips, batches of 32 ids; errors per frame;
bytes of the frame arrays and their ranges only), plus the rate of the first read, which decodes the whole
level. Baselines measured in the same run: a float32 NumPy memmap and h5py with gzip (level 4, chunks of 64
clips, or one clip for frames; sorted fancy index).

What is compared (clip level, the training access pattern): batches are consecutive slices of a shuffled
epoch. The memmap gets each batch as row indices (``mm[rows]``: the fastest possible baseline, with no id
join at all); the store gets the same kind of batch as clip ids (``store.read(ids)``: ids -> rows, the
done/failed-row check, then the gather), given either as a list of Python strings or as a NumPy string
array. Building the id list of a batch is the caller's work and happens outside the timed loop. Memmap and
store reads are timed in alternating rounds on disjoint batches of the same epoch, after a warm-up, so that
load from other processes hits both alike; each rows/s figure is the median over the rounds. The memmap file
is read once in full before (in the page cache, as the store's decoded rows are in RAM).
Frame reads are timed the same way against the frame memmap.

Views (a store of K = 4 views per clip, ``[n, 4, 527]`` q8: view 0 the clip-level data, views 1-3 the same
logits moved by noise of 0.5 as an augmentation would; 20 000 clips, 50 000 at full size): the training read
(``store.read(ids, views=v)``, one random view per id, ids as a list of str) timed in alternating rounds
against ``store.read(ids)`` of a single-view q8 store of view 0 (same clips, same batches), and the bytes per
view-logit of both. The same rounds time the bare gathers on float32 arrays (``[n * 4, C].take(rows * 4 + v)``
against ``[n, C].take(rows)``): the part of the difference that comes from holding 4x the decoded rows.
Top-k views (``bench_topk``, a quarter of those clips at K = 4): the ``topk`` codec keeping 20 of 527 logits a
view, its bytes per view on disk (records and class profiles after zstd), the binary KL per class of the
tagging targets, and on scene-like logits (10 classes, CP-ResNet-shaped, 5 kept) the softmax KL at T = 1 and 2;
for each way of reading back the other classes (``rest`` sigmoid or softmax, with the class profile or an even
floor). Teaching views (``bench_teach_views``): ``kd teach`` of ``passt_tiny`` on demo scenes into a topk store at
K = 1, 8 and 40 (``--quick``: 1 and 8), the steady seconds per view relative to K = 1 (``teach_time_per_view_vs_k1``;
at most 1 means teach time grows no faster than K).
The last line is one JSON object: the default codec's (q8) ``bytes_per_logit``, ``max_abs_dsigmoid``,
``kl_t1``, ``kl_t2``, ``read_vs_memmap`` (ids as a list of str), ``read_vs_memmap_id_array``,
``read_vs_h5py`` and the default frame codec's (qb) ``frame_bytes_per_logit``, ``frame_max_abs_dsigmoid``,
``frame_kl_t1``, ``frame_kl_t2``, ``frame_read_vs_memmap``, ``frame_write_mb_s`` and ``frame_decode_mb_s``
and the K = 4 store's ``views_read_vs_single`` and ``views_bytes_per_logit_vs_single``, and ``topk_bytes_per_view``
and ``topk_kl`` (the larger of the tagging and the scene KL of the choices ``kd teach`` makes) at the top level, the same and more per codec under ``codecs`` and ``frame_codecs``, and the baselines
under ``baselines``.

    python benchmarks/store_bench.py            # full sizes (several minutes, ~6 GB of RAM)
    python benchmarks/store_bench.py --quick    # 20 000 x 527 clips, 150 x 250 x 447 frames (< 1 minute)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logit_store import LogitStore, get_codec

CODECS = ("f32", "f16", "q8")
FRAME_CODECS = ("f32", "f16", "q8", "qb")
DEFAULT_CODEC, DEFAULT_FRAME_CODEC = "q8", "qb"
COMPARES = ("read_vs_memmap: store.read(ids as a list of str) vs memmap[row indices], median rows/s of "
            "alternating rounds on disjoint shuffled-epoch batches; _id_array: ids as a NumPy str array; "
            "frame_read_vs_memmap: the same at frame level (batches of frame_batch ids); views_read_vs_single: "
            "store.read(ids, views=one random view per id) of a K=4 store vs store.read(ids) of a single-view "
            "store of the same clips, median rows/s of alternating rounds")
VIEWS = 4


def audioset_like(n: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prior = rng.uniform(-13, -6, c).astype(np.float32)
    freq = 1.0 / np.arange(1, c + 1)
    freq = rng.permutation(freq / freq.sum() * 2.5)  # ~2.5 positives per clip
    out = np.empty((n, c), np.float32)
    for start in range(0, n, 10000):
        m = min(n, start + 10000) - start
        x = prior + rng.normal(0, 1.0, (m, 1)).astype(np.float32) + rng.normal(0, 1.5, (m, c)).astype(np.float32)
        positive = rng.random((m, c)) < freq
        x[positive] = rng.normal(2.5, 2.0, int(positive.sum()))
        out[start:start + m] = x
    return out


def smooth_frames(n: int, t: int, c: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prior = rng.uniform(-12, -5, c).astype(np.float32)
    out = np.empty((n, t, c), np.float32)
    frames = np.arange(t)[:, None]
    for start in range(0, n, 50):
        m = min(n, start + 50) - start
        drift = np.empty((m, t, c), np.float32)
        drift[:, 0] = rng.normal(0, 1.0, (m, c))
        noise = rng.normal(0, 0.25, (m, t, c)).astype(np.float32)
        for i in range(1, t):  # AR(1) with a correlation time of ~20 frames
            drift[:, i] = 0.95 * drift[:, i - 1] + noise[:, i]
        x = prior + rng.normal(0, 1.0, (m, 1, 1)).astype(np.float32) + drift
        for j in range(m):
            for cls in rng.choice(c, size=rng.integers(1, 5), replace=False):
                on, length = rng.integers(0, t), rng.integers(10, t // 2)
                edge = 1 / (1 + np.exp(-(frames[:, 0] - on) / 2.0)) * (1 / (1 + np.exp((frames[:, 0] - on - length) / 2.0)))
                x[j, :, cls] += edge * (rng.normal(2.5, 1.5) - x[j, :, cls].mean())
        out[start:start + m] = x
    return out


def target_error(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """max |Δ sigmoid| and mean softmax KL(ref || got) at T=1 and T=2 over the last (class) axis."""
    ref2, got2 = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    dsig, kl = 0.0, {1: 0.0, 2: 0.0}
    step = 20000
    for s in range(0, len(ref2), step):
        a, b = ref2[s:s + step].astype(np.float64), got2[s:s + step].astype(np.float64)
        dsig = max(dsig, float(np.abs(1 / (1 + np.exp(-a)) - 1 / (1 + np.exp(-b))).max()))
        for t in kl:
            la, lb = _log_softmax(a / t), _log_softmax(b / t)
            kl[t] += float((np.exp(la) * (la - lb)).sum())
    return {"max_abs_dsigmoid": dsig, "kl_t1": kl[1] / len(ref2), "kl_t2": kl[2] / len(ref2)}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def batches(n: int, batch: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` consecutive batches of shuffled epochs over ``n`` rows (distinct rows within each batch)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < count:
        order = rng.permutation(n)
        out += [order[i:i + batch] for i in range(0, n - batch + 1, batch)]  # drop_last, as a sampler would
    return out[:count]


def rows_per_s(read, index_batches: list[np.ndarray]) -> float:
    read(index_batches[0])  # warm-up: opens files, fills caches
    start = time.perf_counter()
    for rows in index_batches[1:]:
        read(rows)
    return sum(len(b) for b in index_batches[1:]) / (time.perf_counter() - start)


def paired_read_rates(reads: dict, index_batches: list[np.ndarray], rounds: int) -> dict[str, float]:
    """Median rows/s of each ``reads[name](i)`` (``i`` indexes ``index_batches``), timed in alternating rounds.

    Every reader first reads batch 0 (warm-up), then the remaining batches are split into ``rounds`` x
    ``len(reads)`` disjoint groups; in each round every reader times its own group, in a rotating order.
    """
    names = list(reads)
    for name in names:
        reads[name](0)
    groups = np.array_split(np.arange(1, len(index_batches)), rounds * len(names))
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            group = groups[r * len(names) + k]
            start = time.perf_counter()
            for i in group:
                reads[name](i)
            elapsed = time.perf_counter() - start
            rates[name].append(sum(len(index_batches[i]) for i in group) / elapsed)
    return {name: float(np.median(v)) for name, v in rates.items()}


def bench_store(root: Path, codec: str, clip: np.ndarray, clip_batches, memmap: np.ndarray, rounds: int):
    """Clip level: write ``clip`` with ``codec``, read shuffled batches by id against the memmap, target error."""
    url = str(root / f"{codec}.zarr")
    n, c = clip.shape
    ids = [f"Y{i:07d}" for i in range(n)]
    store = LogitStore.create(url, ids, [f"class{i}" for i in range(c)], dataset="synthetic",
                              dataset_fingerprint="synthetic", chunk_size=1024, overwrite=True)
    store.add_teacher("clip_teacher", codec=codec)
    start = time.perf_counter()
    for k in range(store.num_chunks):
        store.write_chunk("clip_teacher", k, clip[store.chunk_rows(k)])
    clip_write_s = time.perf_counter() - start

    reader = LogitStore.open(url)
    start = time.perf_counter()
    reader.read(ids[:1])
    cold_open_s = time.perf_counter() - start
    id_objects, id_strings = np.array(ids, dtype=object), np.array(ids)
    id_lists = [id_objects[b].tolist() for b in clip_batches]  # the caller's work, outside the timed loop
    id_arrays = [id_strings[b] for b in clip_batches]
    rates = paired_read_rates({
        "memmap_rows": lambda i: np.asarray(memmap[clip_batches[i]]),
        "store_id_list": lambda i: reader.read(id_lists[i], ["clip_teacher"]),
        "store_id_array": lambda i: reader.read(id_arrays[i], ["clip_teacher"]),
    }, clip_batches, rounds)
    decoded = reader.read(ids, ["clip_teacher"])
    info = reader.info()["teachers"]["clip_teacher"]
    shutil.rmtree(url)
    return {
        "bytes_per_logit": info["bytes_per_logit"],
        "write_mb_s": clip.nbytes / 1e6 / clip_write_s,
        "read_rows_s": rates["store_id_list"],
        "read_rows_s_id_array": rates["store_id_array"],
        "paired_memmap_read_rows_s": rates["memmap_rows"],
        "read_vs_memmap": rates["store_id_list"] / rates["memmap_rows"],
        "read_vs_memmap_id_array": rates["store_id_array"] / rates["memmap_rows"],
        "cold_open_first_read_s": cold_open_s,
        **target_error(clip, decoded),
        "store_bytes_on_disk": info["bytes_on_disk"],
    }


def bench_frame_store(root: Path, codec: str, frame: np.ndarray, frame_batches, memmap: np.ndarray,
                      rounds: int) -> dict:
    """Frame level: a frame-wise teacher whose frames use ``codec`` (its clip logits: the frame means, q8 for
    qb); bytes of the frame arrays only, shuffled batch reads by id against the memmap, target error."""
    url = str(root / f"{codec}-frames.zarr")
    n, t, c = frame.shape
    ids = [f"Y{i:07d}" for i in range(n)]
    store = LogitStore.create(url, ids, [f"class{i}" for i in range(c)], dataset="synthetic",
                              dataset_fingerprint="synthetic", chunk_size=64, overwrite=True)
    clip_codec = "q8" if codec == "qb" else codec
    store.add_teacher("frame_teacher", codec=clip_codec, frame_codec=codec, frames=t, frames_per_second=25.0)
    start = time.perf_counter()
    for k in range(store.num_chunks):
        rows = store.chunk_rows(k)
        store.write_chunk("frame_teacher", k, frame[rows].mean(axis=1), frame[rows])
    write_s = time.perf_counter() - start

    reader = LogitStore.open(url)
    id_objects = np.array(ids, dtype=object)
    id_lists = [id_objects[b].tolist() for b in frame_batches]
    start = time.perf_counter()
    reader.read(id_lists[0], ["frame_teacher"], level="frame")  # decodes the whole level (it fits the cache)
    first_read_s = time.perf_counter() - start
    rates = paired_read_rates({
        "memmap_rows": lambda i: np.asarray(memmap[frame_batches[i]]),
        "store_id_list": lambda i: reader.read(id_lists[i], ["frame_teacher"], level="frame"),
    }, frame_batches, rounds)
    decoded = reader.read(ids, ["frame_teacher"], level="frame")
    finfo = reader.info()["teachers"]["frame_teacher"]
    out = {
        "codec": finfo["frame_codec"],
        "frame_bytes_per_logit": _level_bytes(url, "frame_teacher", "frame") / frame.size,
        "frame_write_mb_s": (frame.nbytes + frame.nbytes / t) / 1e6 / write_s,
        "frame_decode_mb_s": frame.nbytes / 1e6 / first_read_s,
        "frame_read_rows_s": rates["store_id_list"],
        "paired_memmap_frame_read_rows_s": rates["memmap_rows"],
        "frame_read_vs_memmap": rates["store_id_list"] / rates["memmap_rows"],
        **{f"frame_{k}": v for k, v in target_error(frame, decoded).items()},
    }
    shutil.rmtree(url)
    return out


def scene_like(n: int, c: int = 10, seed: int = 5) -> np.ndarray:
    """Logits of a trained scene classifier, shaped like CP-ResNet's on held-out scenes: the scene near +5, one
    confusable scene near +2, the others near -1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(-1.0, 0.3, (n, c)).astype(np.float32)
    rows = np.arange(n)
    scene = rng.integers(0, c, n)
    confusable = (scene + rng.integers(1, c, n)) % c
    x[rows, scene] += rng.normal(6.1, 1.2, n).astype(np.float32)
    x[rows, confusable] += rng.normal(2.6, 1.3, n).astype(np.float32)
    return x


def augmented_views(clip: np.ndarray, count: int, seed: int = 4) -> np.ndarray:
    """``[n, count, C]``: view 0 the clip's logits, the others moved by noise of 0.5 as an augmentation would."""
    rng = np.random.default_rng(seed)
    views = np.repeat(clip[:, None, :], count, axis=1)
    views[:, 1:] += rng.normal(0, 0.5, views[:, 1:].shape).astype(np.float32)
    return views


def binary_kl(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over clips and classes of KL(sigmoid(ref) || sigmoid(got)) per class: by how much the BCE soft loss
    of tagging students moves."""
    a, b = ref.astype(np.float64), got.astype(np.float64)
    # KL(p || q) of Bernoulli variables from logits: softplus(b) - softplus(a) - p (b - a), stable at any z
    softplus = lambda z: np.logaddexp(0.0, z)
    return float((softplus(b) - softplus(a) - (0.5 * (1 + np.tanh(a / 2))) * (b - a)).mean())


def bench_topk(root: Path, clip: np.ndarray, k: int = 20, scene_k: int = 5) -> dict:
    """The topk codec at ``k`` of 527 classes on ``VIEWS`` views per clip: bytes per view on disk and the error of
    the targets (binary KL per class for tagging; softmax KL at T=1 and 2 for scene logits at ``scene_k`` of
    10), for both ways of reading back the other classes (``rest``) with and without the class profile."""
    n, c = clip.shape
    views = augmented_views(clip, VIEWS)
    scenes = scene_like(n).reshape(n // VIEWS, VIEWS, 10) if n % VIEWS == 0 else scene_like(n)[:, None]
    ids, classes = [f"Y{i:07d}" for i in range(n)], [f"class{i}" for i in range(c)]
    checked = min(n, 5000)
    out = {}
    for rest in ("sigmoid", "softmax"):
        for profile in (True, False):
            codec = {"name": "topk", "k": k, "rest": rest, "profile": profile}
            url = str(root / f"topk-{rest}-{profile}.zarr")
            store = LogitStore.create(url, ids, classes, dataset="synthetic", dataset_fingerprint="synthetic",
                                      chunk_size=1024, overwrite=True, views={"count": VIEWS}, view_param_names=["seed"])
            store.add_teacher("t", codec=codec)
            start = time.perf_counter()
            for chunk in range(store.num_chunks):
                rows = store.chunk_rows(chunk)
                store.write_chunk("t", chunk, views[rows], view_params=np.zeros((rows.stop - rows.start, VIEWS, 1)))
            write_s = time.perf_counter() - start
            got = LogitStore.open(url).read(ids[:checked], ["t"], views=np.arange(checked) % VIEWS)
            scene_codec = get_codec({**codec, "k": scene_k}).for_classes(10)
            stored, side = scene_codec.encode(scenes, 0, 128)
            scene_err = target_error(scenes, scene_codec.decode(stored, side, 0, 128))
            out[f"rest_{rest}{'' if profile else '_even'}"] = {
                "bytes_per_view": _level_bytes(url, "t", "clip") / (n * VIEWS),
                "tagging_binary_kl": binary_kl(views[np.arange(checked), np.arange(checked) % VIEWS], got),
                "scene_kl_t1": scene_err["kl_t1"], "scene_kl_t2": scene_err["kl_t2"],
                "write_views_s": n * VIEWS / write_s,
            }
            shutil.rmtree(url)
    return {"k": k, "scene_k": scene_k, "classes": c, "views": VIEWS, "clips": n, **out}


TAUGHT_VIEWS = (1, 8, 40)
QUICK_TAUGHT_VIEWS = (1, 8)  # K = 40 is most of the quick run's time


def bench_teach_views(root: Path, clips: int, counts: tuple[int, ...] = TAUGHT_VIEWS) -> dict:
    """``kd teach`` of ``passt_tiny`` (one worker) into a topk store at K = ``counts`` views of demo scenes: the
    steady-state seconds per view, relative to K = 1 (the clip is decoded once; its views are drawn from their
    seeds and augmented in the decode threads)."""
    from teach_bench import timed_teach  # kd and torch: only this part of the benchmark needs them

    from kd.core.checkpoints import TeacherSpec
    from kd.demo.data import make_demo_data
    from kd.teach.config import TeachConfig

    demo = make_demo_data(root / "views-demo", "asc", clips=clips, seed=0)
    seconds_per_view = {}
    for count in counts:
        cfg = TeachConfig(dataset=demo["spec"], store=str(root / f"views-{count}.zarr"), split="train",
                          teachers=(TeacherSpec("passt_tiny"),), codec="topk", topk=5, views=count,
                          augment=("roll", "gain", "speed") if count > 1 else (), batch_size=8, chunk_size=4,
                          workers=1, tracking_uri=f"sqlite:///{root / 'views-mlflow.db'}")
        seconds_per_view[count] = 1 / (timed_teach(cfg)["clips_per_s"] * count)
    return {"seconds_per_view": seconds_per_view,
            "vs_k1": {count: s / seconds_per_view[1] for count, s in seconds_per_view.items() if count > 1}}


def bench_views(root: Path, clip: np.ndarray, view_batches: list[np.ndarray], rounds: int) -> dict:
    """A q8 store of ``VIEWS`` views per clip against a single-view q8 store of view 0: the per-id view read
    of training against the plain read (paired), and bytes per view-logit."""
    n, c = clip.shape
    rng = np.random.default_rng(4)
    views = augmented_views(clip, VIEWS)
    params = rng.uniform(-1, 1, (n, VIEWS, 4)).astype(np.float32)
    ids = [f"Y{i:07d}" for i in range(n)]
    classes = [f"class{i}" for i in range(c)]
    urls = {"single": str(root / "single-view.zarr"), "views": str(root / "views.zarr")}
    single = LogitStore.create(urls["single"], ids, classes, dataset="synthetic", dataset_fingerprint="synthetic",
                               chunk_size=1024, overwrite=True)
    multi = LogitStore.create(urls["views"], ids, classes, dataset="synthetic", dataset_fingerprint="synthetic",
                              chunk_size=1024, overwrite=True, views={"count": VIEWS, "kinds": ["synthetic"]},
                              view_param_names=["a", "b", "c", "d"])
    single.add_teacher("t", codec="q8")
    multi.add_teacher("t", codec="q8")
    start = time.perf_counter()
    for k in range(multi.num_chunks):
        rows = multi.chunk_rows(k)
        multi.write_chunk("t", k, views[rows], view_params=params[rows])
    write_s = time.perf_counter() - start
    for k in range(single.num_chunks):
        single.write_chunk("t", k, clip[single.chunk_rows(k)])
    readers = {name: LogitStore.open(url) for name, url in urls.items()}
    id_objects = np.array(ids, dtype=object)
    id_lists = [id_objects[b].tolist() for b in view_batches]
    picks = [rng.integers(0, VIEWS, len(b)) for b in view_batches]
    flat = views.reshape(n * VIEWS, c)
    rates = paired_read_rates({
        "single": lambda i: readers["single"].read(id_lists[i], ["t"]),
        "views": lambda i: readers["views"].read(id_lists[i], ["t"], views=picks[i]),
        # the same gathers on bare float32 arrays: what holding 4x the rows costs by itself
        "numpy_single": lambda i: clip.take(view_batches[i], axis=0),
        "numpy_views": lambda i: flat.take(view_batches[i] * VIEWS + picks[i], axis=0),
    }, view_batches, rounds)
    all_views_rows_s = rows_per_s(lambda b: readers["views"].read(id_objects[b].tolist(), ["t"]), view_batches[:101])
    checked = min(n, 5000)  # the target error of a sample of clips (the clip-level codecs report the q8 error)
    picked = readers["views"].read(ids[:checked], ["t"], views=np.arange(checked) % VIEWS)
    bpl = {name: r.info()["teachers"]["t"]["bytes_per_logit"] for name, r in readers.items()}
    for url in urls.values():
        shutil.rmtree(url)
    return {
        "views": VIEWS, "clips": n,
        "views_read_rows_s": rates["views"], "paired_single_view_read_rows_s": rates["single"],
        "views_read_vs_single": rates["views"] / rates["single"],
        "numpy_take_views_vs_single": rates["numpy_views"] / rates["numpy_single"],
        "all_views_read_rows_s": all_views_rows_s,
        "views_bytes_per_logit": bpl["views"], "single_view_bytes_per_logit": bpl["single"],
        "views_bytes_per_logit_vs_single": bpl["views"] / bpl["single"],
        "views_write_mb_s": views.nbytes / 1e6 / write_s,
        **{f"views_{k}": v for k, v in target_error(views[np.arange(checked), np.arange(checked) % VIEWS],
                                                    picked).items()},
    }


def _level_bytes(url: str, teacher: str, level: str) -> int:
    root = Path(url) / "teachers" / teacher
    return sum(f.stat().st_size for name in (level, f"{level}_range") for f in (root / name).rglob("*") if f.is_file())


def bench_memmap(root: Path, clip: np.ndarray, frame: np.ndarray, clip_batches, frame_batches) -> dict[str, float]:
    out = {}
    for name, x, bs in (("clip", clip, clip_batches), ("frame", frame, frame_batches)):
        path = root / f"{name}.f32"
        start = time.perf_counter()
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=x.shape)
        mm[:] = x
        mm.flush()
        del mm
        write_s = time.perf_counter() - start
        mm = np.load(path, mmap_mode="r")
        out[f"{name}_write_mb_s"] = x.nbytes / 1e6 / write_s
        out[f"{name}_read_rows_s"] = rows_per_s(lambda r, mm=mm: np.asarray(mm[r]), bs)
        out[f"{name}_bytes_per_logit"] = path.stat().st_size / x.size
    return out


def bench_h5py(root: Path, clip: np.ndarray, frame: np.ndarray, clip_batches, frame_batches) -> dict[str, float]:
    import h5py

    out = {}
    for name, x, bs, chunks in (("clip", clip, clip_batches, (64, clip.shape[1])),
                                ("frame", frame, frame_batches, (1, *frame.shape[1:]))):
        path = root / f"{name}.h5"
        start = time.perf_counter()
        with h5py.File(path, "w") as f:
            f.create_dataset("logits", data=x, chunks=chunks, compression="gzip", compression_opts=4)
        out[f"{name}_write_mb_s"] = x.nbytes / 1e6 / (time.perf_counter() - start)
        f = h5py.File(path, "r")
        ds = f["logits"]

        def read(rows, ds=ds):
            order = np.argsort(rows)
            got = ds[np.sort(rows)]  # h5py needs increasing indices
            return got[np.argsort(order)]
        out[f"{name}_read_rows_s"] = rows_per_s(read, bs)
        out[f"{name}_bytes_per_logit"] = path.stat().st_size / x.size
        f.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute")
    parser.add_argument("--batch", type=int, default=128, help="clip-level batch size (shuffled ids)")
    parser.add_argument("--frame-batch", type=int, default=32, help="frame-level batch size")
    parser.add_argument("--workdir", default=None, help="where to write the stores (default: a temp folder)")
    args = parser.parse_args()
    n, nf = (20000, 150) if args.quick else (200000, 2000)
    nv = 20000 if args.quick else 50000
    clip_batches = batches(n, args.batch, 421 if args.quick else 4201, seed=2)
    view_batches = batches(nv, args.batch, 4001, seed=4)  # cheap batches: long rounds against the machine's noise
    frame_batches = batches(nf, args.frame_batch, 41 if args.quick else 161, seed=3)
    t0 = time.perf_counter()
    clip, frame = audioset_like(n, 527), smooth_frames(nf, 250, 447)
    print(f"data: clip {clip.shape}, frame {frame.shape} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="store_bench-", dir=args.workdir))
    try:
        # h5py+gzip is slow; its rate settles within a few hundred batches (--quick: a rough figure)
        few = clip_batches[:41 if args.quick else 201]
        baselines = {"memmap": bench_memmap(root, clip, frame, few, frame_batches[:11]),
                     "h5py_gzip": bench_h5py(root, clip, frame, few, frame_batches[:11])}
        print(f"baselines: {json.dumps(baselines)}", file=sys.stderr)
        codecs, frame_codecs = {}, {}
        for codec in CODECS:
            memmap = np.load(root / "clip.f32", mmap_mode="r")
            float(memmap.sum(dtype=np.float64))  # page it in: the store's rows are decoded in RAM too
            r = bench_store(root, codec, clip, clip_batches, memmap, rounds=7)
            r["read_vs_h5py"] = r["read_rows_s"] / baselines["h5py_gzip"]["clip_read_rows_s"]
            codecs[codec] = r
            print(f"{codec}: {json.dumps(r)}", file=sys.stderr)
        for codec in FRAME_CODECS:
            memmap = np.load(root / "frame.f32", mmap_mode="r")
            float(memmap.sum(dtype=np.float64))
            r = bench_frame_store(root, codec, frame, frame_batches, memmap, rounds=5)
            r["frame_read_vs_h5py"] = r["frame_read_rows_s"] / baselines["h5py_gzip"]["frame_read_rows_s"]
            frame_codecs[codec] = r
            print(f"frames {codec}: {json.dumps(r)}", file=sys.stderr)
        views = bench_views(root, clip[:nv], view_batches, rounds=9)
        print(f"views: {json.dumps(views)}", file=sys.stderr)
        topk = bench_topk(root, clip[:nv // VIEWS])
        print(f"topk: {json.dumps(topk)}", file=sys.stderr)
        taught = bench_teach_views(root, *((20, QUICK_TAUGHT_VIEWS) if args.quick else (60, TAUGHT_VIEWS)))
        print(f"teach views: {json.dumps(taught)}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    top = {k: codecs[DEFAULT_CODEC][k] for k in ("bytes_per_logit", "max_abs_dsigmoid", "kl_t1", "kl_t2",
                                                 "read_vs_memmap", "read_vs_memmap_id_array", "read_vs_h5py",
                                                 "write_mb_s", "read_rows_s")}
    frame_top = {k: frame_codecs[DEFAULT_FRAME_CODEC][k] for k in (
        "frame_bytes_per_logit", "frame_max_abs_dsigmoid", "frame_kl_t1", "frame_kl_t2", "frame_read_vs_memmap",
        "frame_write_mb_s", "frame_decode_mb_s")}
    print(json.dumps({"default_codec": DEFAULT_CODEC, **top, "default_frame_codec": DEFAULT_FRAME_CODEC, **frame_top,
                      "views_read_vs_single": views["views_read_vs_single"],
                      "views_bytes_per_logit_vs_single": views["views_bytes_per_logit_vs_single"],
                      # what kd teach --codec topk stores: tagging rest=sigmoid with the class profile, scenes
                      # rest=softmax with an even floor (the better of each pair on each kind of logits)
                      "topk_bytes_per_view": topk["rest_sigmoid"]["bytes_per_view"],
                      "topk_kl": max(topk["rest_sigmoid"]["tagging_binary_kl"],
                                     topk["rest_softmax_even"]["scene_kl_t1"]),
                      "teach_time_per_view_vs_k1": taught["vs_k1"],
                      "read_compares": COMPARES, "clips": n, "frame_clips": nf, "batch": args.batch,
                      "frame_batch": args.frame_batch, "codecs": codecs, "frame_codecs": frame_codecs,
                      "views": views, "topk": topk, "teach_views": taught, "baselines": baselines}))


if __name__ == "__main__":
    main()
