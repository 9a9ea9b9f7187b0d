"""Conformance suite of the logit store, run over every storage backend (memory, local, S3: ``backends.py``)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from kd_errors import KdError
from logit_store import (
    DatasetMismatch,
    IncompatibleStore,
    InvalidLogits,
    LogitStore,
    MissingIds,
    StoreError,
    StoreNotFound,
    TeacherConflict,
    UnknownTeacher,
    UnwrittenRows,
    VocabularyMismatch,
    get_codec,
)

N, C, T, CHUNK = 150, 12, 16, 64
IDS = [f"clip-{i:04d}" for i in range(N)]
CLASSES = [f"class{i}" for i in range(C)]
MIDS = [f"/m/{i:03d}" for i in range(C)]


def logits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mostly negative clip logits with a few positives, and temporally smooth frame logits."""
    rng = np.random.default_rng(seed)
    clip = rng.normal(-6, 2.5, (N, C)).astype(np.float32)
    clip[rng.random((N, C)) < 0.1] = rng.normal(2, 2, 1)
    frame = np.cumsum(rng.normal(0, 0.3, (N, T, C)), axis=1).astype(np.float32) + clip[:, None, :]
    return clip, frame


def new_store(url: str, **kw) -> LogitStore:
    return LogitStore.create(url, IDS, CLASSES, mids=MIDS, dataset="demo#train", dataset_fingerprint="fp1",
                             chunk_size=CHUNK, **kw)


def fill(store: LogitStore, name: str, clip: np.ndarray, frame: np.ndarray | None = None, codec: str = "q8"):
    store.add_teacher(name, codec=codec, frames=None if frame is None else T,
                      frames_per_second=None if frame is None else 25.0, attrs={"checkpoint_sha256": "abc"})
    for k in range(store.num_chunks):
        rows = store.chunk_rows(k)
        store.write_chunk(name, k, clip[rows], None if frame is None else frame[rows])


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def softmax_kl(a, b, t):
    def log_softmax(z):
        z = np.asarray(z, np.float64) / t
        return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    la, lb = log_softmax(a), log_softmax(b)
    return float((np.exp(la) * (la - lb)).sum(-1).mean())


def test_layout_round_trip(url):
    store = new_store(url)
    assert store.clip_ids == IDS and store.classes == CLASSES and store.mids == MIDS
    assert store.num_chunks == 3 and store.chunk_rows(2) == slice(128, 150)
    assert store.chunk_ids(1) == IDS[64:128]
    np.testing.assert_array_equal(store.rows_of(["clip-0149", "clip-0003"]), [149, 3])
    reopened = LogitStore.open(url)
    assert reopened.clip_ids == IDS and reopened.chunk_size == CHUNK and reopened.teachers == []


@pytest.mark.parametrize("codec, clip_tol, sig_tol", [("f32", 0.0, 0.0), ("f16", 5e-3, 1e-3), ("q8", 0.12, 0.004)])
def test_codec_round_trip_error_bounds(url, codec, clip_tol, sig_tol):
    clip, frame = logits()
    store = new_store(url)
    fill(store, "t", clip, frame, codec)
    store = LogitStore.open(url)
    got = store.read(IDS[::-1], ["t"])
    assert got.dtype == np.float32 and got.shape == (N, C)
    assert np.abs(got - clip[::-1]).max() <= clip_tol
    assert np.abs(sigmoid(got) - sigmoid(clip[::-1])).max() <= sig_tol
    frames = store.read(IDS[5:9], ["t"], level="frame")
    assert frames.shape == (4, T, C)
    assert np.abs(sigmoid(frames) - sigmoid(frame[5:9])).max() <= sig_tol
    info = store.info()["teachers"]["t"]
    assert info["codec"] == codec and info["fraction_done"] == 1.0


def test_q8_meets_kd_targets_on_audioset_like_logits():
    rng = np.random.default_rng(1)
    x = rng.uniform(-13, -6, 527) + rng.normal(0, 1, (2048, 1)) + rng.normal(0, 1.5, (2048, 527))
    pos = rng.random(x.shape) < 0.005
    x[pos] = rng.normal(2.5, 2, pos.sum())
    x = x.astype(np.float32)
    codec = get_codec("q8")
    codes, ranges = codec.encode(x, 0, 128)
    y = codec.decode(codes, ranges, 0, 128)
    assert codes.dtype == np.uint8
    assert np.abs(sigmoid(y) - sigmoid(x)).max() <= 0.004
    assert softmax_kl(x, y, 1) <= 1e-4 and softmax_kl(x, y, 2) <= 1e-4


def test_ensemble_views(url):
    clip_a, _ = logits(1)
    clip_b, _ = logits(2)
    store = new_store(url)
    fill(store, "a", clip_a, codec="f32")
    fill(store, "b", clip_b, codec="f32")
    ids = IDS[10:20]
    a, b = clip_a[10:20], clip_b[10:20]
    np.testing.assert_allclose(store.read(ids, ["a", "b"]), (a + b) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store.read(ids, ["a", "b"], weights=[3, 1]), 0.75 * a + 0.25 * b, rtol=1e-5, atol=1e-5)
    p = 0.25 * sigmoid(a) + 0.75 * sigmoid(b)
    got = store.read(ids, ["a", "b"], weights=[1, 3], space="prob")
    np.testing.assert_allclose(sigmoid(got), p, rtol=1e-4, atol=1e-6)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    mixed = store.read(ids, ["a", "b"], space="prob", activation="softmax")
    np.testing.assert_allclose(softmax(mixed.astype(np.float64)), 0.5 * softmax(a) + 0.5 * softmax(b), atol=1e-6)
    np.testing.assert_array_equal(store.read(ids), store.read(ids, ["a", "b"]))  # default: all teachers
    with pytest.raises(StoreError, match="weights"):
        store.read(ids, ["a", "b"], weights=[1])


def test_invalid_rows_and_failures_read_back_as_errors(url):
    clip, _ = logits()
    store = new_store(url)
    store.add_teacher("t", codec="q8", attrs={})
    valid = np.ones(CHUNK, bool)
    valid[[3, 7]] = False
    bad = clip[:CHUNK].copy()
    bad[3] = np.nan  # invalid rows are not checked nor stored
    store.write_chunk("t", 0, bad, valid=valid, failures={IDS[3]: "truncated file"})
    assert store.failures("t") == {IDS[3]: "truncated file", IDS[7]: "marked invalid by the writer"}
    assert np.abs(store.read(IDS[:3], ["t"]) - clip[:3]).max() < 0.2
    with pytest.raises(UnwrittenRows, match=r"2 requested clip\(s\).*truncated file"):
        store.read([IDS[0], IDS[3], IDS[7]], ["t"])
    with pytest.raises(UnwrittenRows, match="clip-0100"):  # chunk 1 never written
        store.read([IDS[100]], ["t"])
    assert store.verify()[-1].kind == "incomplete"


def test_non_finite_logits_are_refused_and_detected(url, tmp_path):
    clip, _ = logits()
    store = new_store(url)
    store.add_teacher("t", codec="f32")
    bad = clip[:CHUNK].copy()
    bad[5, 2] = np.inf
    with pytest.raises(InvalidLogits, match="NaN/inf for 1 clip.*clip-0005"):
        store.write_chunk("t", 0, bad)
    assert not store.done_chunks("t").any()  # nothing marked done
    fill_rest = clip.copy()
    for k in range(store.num_chunks):
        store.write_chunk("t", k, fill_rest[store.chunk_rows(k)])
    assert store.verify() == []
    import zarr
    from zarr.storage import FsspecStore

    root = zarr.open_group(FsspecStore.from_url(url), mode="r+")
    root["teachers/t/clip"][70, 1] = np.nan  # damage behind the store's back
    problems = LogitStore.open(url).verify()
    assert [(p.kind, p.chunk) for p in problems] == [("non-finite", 1)] and "clip-0070" in problems[0].message


def test_teacher_registration_rules(url):
    store = new_store(url)
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0, attrs={"checkpoint_sha256": "abc"})
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0, attrs={"checkpoint_sha256": "abc"})
    assert store.teachers == ["t"]
    info = store.teacher_info("t")
    assert info["checkpoint_sha256"] == "abc" and info["codec"] == "q8" and info["frames"] == T
    assert info["created_at"] and "kd_version" in info
    with pytest.raises(TeacherConflict, match="checkpoint_sha256: stored 'abc', given 'def'"):
        store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0, attrs={"checkpoint_sha256": "def"})
    with pytest.raises(TeacherConflict, match="codec"):
        store.add_teacher("t", codec="f16", frames=T, frames_per_second=25.0, attrs={"checkpoint_sha256": "abc"})
    with pytest.raises(VocabularyMismatch, match="predicts 5 classes, the store has 12"):
        store.add_teacher("u", attrs={"num_classes": 5})
    with pytest.raises(StoreError, match="unknown codec 'q4'"):
        store.add_teacher("u", codec="q4")
    store.add_teacher("u", codec="f16")  # a later teacher leaves the first untouched
    assert store.teacher_info("t")["checkpoint_sha256"] == "abc" and store.teachers == ["t", "u"]
    store.set_teacher_metrics("u", {"mAP": 0.4})
    store.set_attrs({"ensemble_metrics": {"mAP": 0.5}})
    reopened = LogitStore.open(url)
    assert reopened.teacher_info("u")["metrics"] == {"mAP": 0.4}
    assert reopened.user_attrs == {"ensemble_metrics": {"mAP": 0.5}}


def test_bad_inputs_are_one_line_errors(url):
    clip, _ = logits()
    store = new_store(url)
    fill(store, "t", clip, codec="f16")
    with pytest.raises(UnknownTeacher, match="unknown teacher 'nope'; the store holds: t"):
        store.read(IDS[:2], ["nope"])
    with pytest.raises(MissingIds, match=r"3 of 5 clip ids are not in the store: 'x1', 'x2', 'x3'"):
        store.read(["x1", IDS[0], "x2", IDS[1], "x3"])
    with pytest.raises(VocabularyMismatch, match="class 4 differs: the store has 'class4', the dataset 'dog'"):
        store.check_classes(CLASSES[:4] + ["dog"] + CLASSES[5:])
    with pytest.raises(VocabularyMismatch, match="12 classes, the dataset 11"):
        store.check_classes(CLASSES[:-1])
    store.check_classes(CLASSES)
    with pytest.raises(DatasetMismatch, match="fingerprint fp1, not fp2"):
        store.check_dataset("fp2")
    with pytest.raises(InvalidLogits, match=r"shape \(64, 11\), expected \(64, 12\)"):
        store.write_chunk("t", 0, np.zeros((CHUNK, C - 1)))
    with pytest.raises(StoreError, match="chunk 9 out of range"):
        store.write_chunk("t", 9, np.zeros((CHUNK, C)))
    with pytest.raises(StoreError, match="read-only"):
        LogitStore.open(url).add_teacher("v")
    with pytest.raises(StoreError, match="already holds a Zarr group"):
        new_store(url)
    with pytest.raises(StoreError, match="clip ids must be unique; 1 repeated: 'a'"):
        LogitStore.create(url + "-dup", ["a", "b", "a"], CLASSES, dataset="d", dataset_fingerprint="f")
    for err in (UnknownTeacher, MissingIds, VocabularyMismatch, UnwrittenRows, IncompatibleStore):
        assert issubclass(err, StoreError) and issubclass(err, KdError) and not issubclass(err, ValueError)


def test_missing_and_incompatible_stores(url):
    with pytest.raises(StoreNotFound, match="no logit store at"):
        LogitStore.open(url)
    store = new_store(url)
    import zarr
    from zarr.storage import FsspecStore

    root = zarr.open_group(FsspecStore.from_url(url), mode="r+")
    meta = dict(root.attrs)["logit_store"]
    root.attrs.update({"logit_store": {**meta, "format_version": 99}})
    with pytest.raises(IncompatibleStore, match="format version 99; this kd reads versions 1, 2"):
        LogitStore.open(url)
    root.attrs.update({"logit_store": None})
    with pytest.raises(IncompatibleStore, match="not a kd logit store"):
        LogitStore.open(url)
    assert store.url == url


def test_info_reports_size_and_progress(url):
    clip, frame = logits()
    store = new_store(url)
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0)
    store.write_chunk("t", 0, clip[:CHUNK], frame[:CHUNK])
    info = json.loads(json.dumps(store.info()))
    t = info["teachers"]["t"]
    assert info["clips"] == N and info["classes"] == C and info["chunk_size"] == CHUNK
    assert t["shapes"] == {"clip": [N, C], "frame": [N, T, C]} and t["chunks_done"] == 1
    assert t["fraction_done"] == pytest.approx(1 / 3) and info["fraction_done"] == pytest.approx(1 / 3)
    assert 0 < t["bytes_per_logit"] <= 1.5 and info["bytes_on_disk"] >= t["bytes_on_disk"] > 0


def test_reads_beyond_the_cache_budget_use_chunk_lru(url):
    clip, frame = logits()
    store = new_store(url)
    fill(store, "t", clip, frame, codec="f16")
    small = LogitStore.open(url, cache_bytes=CHUNK * T * C * 4)  # one decoded frame chunk at a time
    order = np.random.default_rng(0).permutation(N)[:40]
    ids = [IDS[i] for i in order]
    np.testing.assert_allclose(small.read(ids, level="frame"), frame[order], atol=0.02)
    reader = small._decoded[("t", "frame")]
    assert not reader.resident and len(reader.lru) <= reader.capacity


def test_store_pickles_without_zarr_state(url):
    clip, _ = logits()
    store = new_store(url)
    fill(store, "t", clip, codec="f32")
    store.read(IDS[:4])
    clone = pickle.loads(pickle.dumps(store))
    assert clone._zroot is None and not len(clone._decoded)
    np.testing.assert_array_equal(clone.read(IDS[:4]), clip[:4])


def count_listings(monkeypatch) -> list[str]:
    """Prefixes of every ``Store.list_prefix`` call zarr's local and fsspec stores make from now on."""
    from zarr.storage import FsspecStore, LocalStore

    calls: list[str] = []
    for cls in (LocalStore, FsspecStore):
        def counted(self, prefix, _original=cls.list_prefix):
            calls.append(prefix)
            return _original(self, prefix)
        monkeypatch.setattr(cls, "list_prefix", counted)
    return calls


def test_progress_is_listed_once_per_handle_and_kept_current_by_its_writes(url, monkeypatch):
    clip, _ = logits()
    store = new_store(url)
    store.add_teacher("t", codec="f32")
    store.write_chunk("t", 0, clip[:CHUNK])
    writer = LogitStore.open(url, "r+")
    listings = count_listings(monkeypatch)
    assert writer.done_chunks("t").tolist() == [True, False, False]
    assert len(listings) == 1 and listings[0].endswith("teachers/t/done/")
    for k in range(store.num_chunks):  # what kd teach does: check progress per chunk, write what is missing
        if not writer.done_chunks("t")[k]:
            writer.write_chunk("t", k, clip[store.chunk_rows(k)])
        assert writer.done_chunks("t")[: k + 1].all() and writer.failures("t") == {}
    assert sorted(writer.done_records("t")) == [0, 1, 2]
    np.testing.assert_array_equal(writer.read(IDS[60:70]), clip[60:70])  # its own chunks read without listing
    assert writer.verify() == [] and len(listings) > 1  # verify reads storage afresh
    del listings[:]
    for _ in range(3):
        writer.done_chunks("t"), writer.done_records("t"), writer.failures("t"), writer.info()
    assert not [p for p in listings if p.endswith("/done/")]


def test_reload_progress_sees_chunks_other_handles_finished(url, monkeypatch):
    clip, _ = logits()
    store = new_store(url)
    store.add_teacher("t", codec="f32")
    store.write_chunk("t", 0, clip[:CHUNK])
    reader = LogitStore.open(url)
    np.testing.assert_array_equal(reader.read(IDS[:4]), clip[:4])  # decodes chunk 1 as unwritten zeros
    store.write_chunk("t", 1, clip[store.chunk_rows(1)], valid=np.arange(CHUNK) != 5,
                      failures={IDS[CHUNK + 5]: "silent file"})
    listings = count_listings(monkeypatch)
    assert reader.done_chunks("t").tolist() == [True, False, False] and not listings  # cached, not re-listed
    reader.reload_progress()
    assert reader.done_chunks("t").tolist() == [True, True, False] and len(listings) == 1
    assert reader.failures("t") == {IDS[CHUNK + 5]: "silent file"}
    np.testing.assert_array_equal(reader.read(IDS[CHUNK:CHUNK + 4]), clip[CHUNK:CHUNK + 4])  # decoded afresh
    store.write_chunk("t", 2, clip[store.chunk_rows(2)])
    np.testing.assert_array_equal(reader.read([IDS[-1]]), clip[-1:])  # a read re-lists once before raising
    assert len(listings) == 2
    with pytest.raises(UnwrittenRows, match="silent file"):
        reader.read([IDS[CHUNK + 5]])
    with pytest.raises(UnknownTeacher):
        reader.reload_progress("nope")
