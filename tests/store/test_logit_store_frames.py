"""Frame codecs in a store: ``qb`` by default for the frames of a ``q8`` teacher, recorded per teacher, and
teachers written before frame codecs existed (frames in ``q8``, no ``frame_codec`` recorded) read as before."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from logit_store import LogitStore, StoreError, TeacherConflict, get_codec

N, C, T, CHUNK = 96, 20, 40, 32
IDS = [f"clip-{i:03d}" for i in range(N)]


def frames(seed: int = 0, events: bool = True) -> np.ndarray:
    """Smooth frame logits: per-class levels, a random walk, and one event per clip."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-12, -5, C) + np.cumsum(rng.normal(0, 0.25, (N, T, C)), axis=1)
    for i in range(N):
        x[i, 10:25, rng.integers(C)] += 11.0 * events
    return x.astype(np.float32)


def write_teacher(url: str, x: np.ndarray, **codecs) -> LogitStore:
    store = LogitStore.create(url, IDS, [f"c{i}" for i in range(C)], dataset="demo", dataset_fingerprint="fp",
                              chunk_size=CHUNK)
    store.add_teacher("t", frames=T, frames_per_second=25.0, **codecs)
    for k in range(store.num_chunks):
        rows = store.chunk_rows(k)
        store.write_chunk("t", k, x[rows].mean(1), x[rows])
    return store


def teacher_group(url: str, name: str = "t"):
    """The teacher's Zarr group, opened behind the store's back."""
    return zarr.open_group(FsspecStore.from_url(url) if "://" in url else url, mode="r+")[f"teachers/{name}"]


def kl(a: np.ndarray, b: np.ndarray, t: float) -> float:
    def log_softmax(z):
        z = np.asarray(z, np.float64) / t
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    la, lb = log_softmax(a), log_softmax(b)
    return float((np.exp(la) * (la - lb)).sum(-1).mean())


def test_q8_teachers_store_frames_in_qb_by_default(url):
    x = frames()
    write_teacher(url, x)
    store = LogitStore.open(url)
    info = store.teacher_info("t")
    assert info["codec"] == "q8" and info["frame_codec"] == "qb"
    assert info["frame_codec_config"] == get_codec("qb").config()
    assert store.info()["teachers"]["t"]["frame_codec"] == "qb"
    got = store.read(IDS[::-1], ["t"], level="frame")
    assert np.abs(1 / (1 + np.exp(-got)) - 1 / (1 + np.exp(-x[::-1]))).max() <= 0.004
    assert kl(x[::-1], got, 1) <= 1e-4 and kl(x[::-1], got, 2) <= 1e-4
    assert store.verify() == []
    group = teacher_group(url)
    assert group["frame_range"].shape == (3, N, 1, C) and group["frame"].dtype == np.uint8


def test_frame_codec_is_a_choice_and_follows_lossless_clip_codecs(url):
    x = frames()
    store = write_teacher(url, x, codec="f16")
    assert store.teacher_info("t")["frame_codec"] == "f16"
    np.testing.assert_array_equal(store.read(IDS, ["t"], level="frame"), x.astype(np.float16).astype(np.float32))
    custom = {"name": "qb", "max_kl": 2e-5, "max_dsigmoid": 0.002}
    for name, y in (("u", x), ("v", frames(events=False))):
        store.add_teacher(name, codec="q8", frame_codec=custom, frames=T, frames_per_second=25.0)
        for k in range(store.num_chunks):
            rows = store.chunk_rows(k)
            store.write_chunk(name, k, y[rows].mean(1), y[rows])
    assert store.teacher_info("u")["frame_codec_config"]["max_kl"] == 2e-5
    # the budget holds wherever 255 levels per class and block suffice: not for an event's class (-10 to +1)
    # at 0.002, which then has q8's resolution (the sigmoid within 0.004)
    got = LogitStore.open(url).read(IDS, ["u"], level="frame")
    dsig = np.abs(1 / (1 + np.exp(-got.astype(np.float64))) - 1 / (1 + np.exp(-x.astype(np.float64))))
    finest = np.broadcast_to(teacher_group(url, "u")["frame_range"][2][:, :1] == 255, x.shape)
    assert dsig[~finest].max() <= 0.002 and dsig.max() <= 0.004 and finest.any()
    y, got = frames(events=False), LogitStore.open(url).read(IDS, ["v"], level="frame")
    assert kl(y, got, 1) <= 2e-5 and kl(y, got, 2) <= 2e-5


def test_teachers_written_before_frame_codecs_read_exactly_as_before(url):
    """A teacher of format version 1 as kd wrote it before ``frame_codec``: q8 frames, nothing recorded."""
    x = frames()
    write_teacher(url, x, frame_codec="q8")
    group = teacher_group(url)
    teacher = dict(group.attrs["teacher"])
    del teacher["frame_codec"], teacher["frame_codec_config"]
    group.attrs.update({"teacher": teacher})
    assert group["frame_range"].shape == (2, N, 1, C)  # q8: (lo, hi) per 64 frames

    store = LogitStore.open(url, "r+")
    codec = get_codec("q8")
    expected = np.concatenate([codec.decode(*codec.encode(x[s:s + CHUNK], 1, 64), 1, 64)
                               for s in range(0, N, CHUNK)])
    np.testing.assert_array_equal(store.read(IDS, ["t"], level="frame"), expected)
    assert store.info()["teachers"]["t"]["frame_codec"] == "q8" and store.verify() == []
    store.add_teacher("t", frames=T, frames_per_second=25.0)  # a resumed kd teach: no conflict, nothing changes
    assert "frame_codec" not in store.teacher_info("t")
    with pytest.raises(TeacherConflict, match="frame_codec"):
        store.add_teacher("t", frames=T, frames_per_second=25.0, frame_codec="qb")
    store.write_chunk("t", 1, x[CHUNK:2 * CHUNK].mean(1), x[CHUNK:2 * CHUNK])  # rewritten in q8, as recorded
    np.testing.assert_array_equal(LogitStore.open(url).read(IDS, ["t"], level="frame"), expected)


def test_resumed_qb_teacher_is_the_same_teacher_and_conflicts_are_named(url):
    write_teacher(url, frames())
    store = LogitStore.open(url, "r+")
    store.add_teacher("t", frames=T, frames_per_second=25.0)
    store.add_teacher("t", frames=T, frames_per_second=25.0, frame_codec="qb")
    with pytest.raises(TeacherConflict, match="frame_codec: stored 'qb', given 'q8'"):
        store.add_teacher("t", frames=T, frames_per_second=25.0, frame_codec="q8")


def test_frame_codec_misuse_is_a_one_line_store_error(url):
    store = LogitStore.create(url, IDS, [f"c{i}" for i in range(C)], dataset="demo", dataset_fingerprint="fp",
                              chunk_size=CHUNK)
    with pytest.raises(StoreError, match="stores frame logits only; pass it as frame_codec"):
        store.add_teacher("t", codec="qb", frames=T, frames_per_second=25.0)
    with pytest.raises(StoreError, match="frame_codec is for frame-wise teachers"):
        store.add_teacher("t", frame_codec="qb")
    with pytest.raises(StoreError, match="unknown codec 'q4'"):
        store.add_teacher("t", frames=T, frames_per_second=25.0, frame_codec="q4")
    assert store.teachers == []
