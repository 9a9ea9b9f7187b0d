"""Stores with K views per clip: logits ``[N, K, C]`` / ``[N, K, T, C]``, the view parameters ``[N, K, P]`` and the
view configuration; single-view stores (and stores written before views existed) keep their layout and reads."""
from __future__ import annotations

import functools
import multiprocessing as mp
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from logit_store import InvalidLogits, LogitStore, StoreError, UnwrittenViews, ViewMismatch, storage
from logit_store.ensemble import combine, normalised_weights

N, C, T, K, CHUNK = 40, 8, 12, 3, 16
IDS = [f"clip-{i:03d}" for i in range(N)]
CLASSES = [f"c{i}" for i in range(C)]
PARAMS = ["impulse_response", "roll_seconds", "gain_db", "speed"]
CONFIG = {"count": K, "kinds": ["dir", "gain"], "seed": 3, "gain_db": 6.0,
          "impulse_responses": ["a.wav", "b.wav"], "ir_fingerprint": "ab12"}
FIXTURE = Path(__file__).parents[1] / "data" / "logit_store_format1"


def view_logits(seed: int = 0, n: int = N, views: int = K, classes: int = C, frames: int = T):
    """Clip logits ``[n, K, C]`` (views: the clip's logits moved a little) and smooth frames ``[n, K, T, C]``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(-5, 2.5, (n, 1, classes)) + (rng.random((n, 1, classes)) < 0.1) * 7
    clip = (base + rng.normal(0, 0.6, (n, views, classes))).astype(np.float32)
    frame = (clip[:, :, None, :] + np.cumsum(rng.normal(0, 0.3, (n, views, frames, classes)), axis=2))
    return clip, frame.astype(np.float32)


def view_params(seed: int = 0, n: int = N, views: int = K) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    p = np.stack([rng.integers(-1, 2, (n, views)), rng.uniform(-0.25, 0.25, (n, views)),
                  rng.uniform(-6, 6, (n, views)), rng.uniform(0.9, 1.1, (n, views))], axis=-1).astype(np.float32)
    p[:, 0] = [-1, 0, 0, 1]  # view 0: the clean clip
    return p


def new_store(url: str, views: dict | None = CONFIG, **kw) -> LogitStore:
    return LogitStore.create(url, IDS, CLASSES, dataset="demo#train", dataset_fingerprint="fp", chunk_size=CHUNK,
                             views=views, view_param_names=None if views is None else PARAMS, **kw)


def fill(store: LogitStore, name: str, clip, frame=None, params=None, **teacher):
    store.add_teacher(name, frames=None if frame is None else frame.shape[-2],
                      frames_per_second=None if frame is None else 25.0, **teacher)
    for k in range(store.num_chunks):
        rows = store.chunk_rows(k)
        store.write_chunk(name, k, clip[rows], None if frame is None else frame[rows],
                          view_params=None if params is None else params[rows])


def raw_group(url: str):
    return zarr.open_group(FsspecStore.from_url(url) if "://" in url else url, mode="r+")


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


@pytest.mark.parametrize("codec, frame_codec, clip_tol, frame_tol", [
    ("f32", "f32", 0, 0), ("f16", "f16", 1e-3, 1e-3), ("q8", "qb", 0.004, 0.004), ("q8", "q8", 0.004, 0.004)])
def test_views_round_trip_and_code_each_view_as_a_single_view_row(url, codec, frame_codec, clip_tol, frame_tol):
    clip, frame = view_logits()
    params = view_params()
    store = new_store(url)
    fill(store, "t", clip, frame, params, codec=codec, frame_codec=frame_codec)
    reopened = LogitStore.open(url)
    got, got_frames = reopened.read(IDS), reopened.read(IDS, level="frame")
    assert got.shape == (N, K, C) and got_frames.shape == (N, K, T, C)
    assert np.abs(sigmoid(got) - sigmoid(clip)).max() <= clip_tol
    assert np.abs(sigmoid(got_frames) - sigmoid(frame)).max() <= frame_tol
    np.testing.assert_array_equal(reopened.view_params(IDS), params)
    # every view is coded exactly as the same logits in a single-view store would be
    for v in range(K):
        single = new_store(f"memory://single-{uuid.uuid4().hex}", views=None)
        fill(single, "t", clip[:, v], frame[:, v], codec=codec, frame_codec=frame_codec)
        np.testing.assert_array_equal(got[:, v], single.read(IDS))
        np.testing.assert_array_equal(got_frames[:, v], single.read(IDS, level="frame"))
    assert reopened.verify() == []


@pytest.mark.parametrize("cache_bytes", [2 * 1024**3, 4096], ids=["resident", "chunk-lru"])
def test_per_id_views_equal_slicing_the_full_read(url, cache_bytes):
    clip, frame = view_logits(1)
    fill(new_store(url), "t", clip, frame, view_params(1))
    store = LogitStore.open(url, cache_bytes=cache_bytes)
    rng = np.random.default_rng(5)
    ids_rows = rng.permutation(N)[:25].tolist() + [3, 3]  # shuffled, across chunks, with a repeat
    ids = [IDS[i] for i in ids_rows]
    views = rng.integers(0, K, len(ids))
    views[-1] = (views[-2] + 1) % K  # the same clip twice, in two views
    for level in ("clip", "frame"):
        full = store.read(ids, level=level)
        picked = store.read(np.array(ids), level=level, views=views)
        np.testing.assert_array_equal(picked, full[np.arange(len(ids)), views])
        np.testing.assert_array_equal(store.read(ids, level=level, views=2), full[:, 2])
    np.testing.assert_array_equal(store.view_params(ids, views), store.view_params(ids)[np.arange(len(ids)), views])
    assert store.read([], views=np.zeros(0, np.int64)).shape == (0, C)
    with pytest.raises(StoreError, match=r"view indices must lie in \[0, 3\).*got 0\.\.3$"):
        store.read(ids[:2], views=[0, 3])
    with pytest.raises(StoreError, match="one integer view index per id"):
        store.read(ids[:2], views=[0.0, 1.0])
    with pytest.raises(StoreError, match="one integer view index per id"):
        store.read(ids[:2], views=[0, 1, 2])


@pytest.mark.parametrize("space, activation", [("logit", "sigmoid"), ("prob", "sigmoid"), ("prob", "softmax")])
def test_ensembles_combine_teachers_view_by_view(url, space, activation):
    params = view_params()
    store = new_store(url)
    for seed, name in enumerate(["a", "b"]):
        fill(store, name, view_logits(seed)[0], params=params, codec="f32")
    weights = [3.0, 1.0]
    got = store.read(IDS, weights=weights, space=space, activation=activation)
    a, b = store.read(IDS, ["a"]), store.read(IDS, ["b"])
    w = normalised_weights(weights, 2)
    for v in range(K):  # the ensemble of each view is the ensemble of that view's rows, as in a single-view store
        np.testing.assert_allclose(got[:, v], combine([a[:, v], b[:, v]], w, space, activation), rtol=1e-6, atol=1e-6)
    views = np.arange(N) % K
    np.testing.assert_array_equal(store.read(IDS, weights=weights, space=space, activation=activation, views=views),
                                  got[np.arange(N), views])


def test_stores_written_before_views_read_as_one_view():
    """A store written by the single-view code (commit c26dda2) reads as it did then, as one view per clip (to a
    float32 ulp: decoding multiplies by the stored scales, and NumPy's SIMD loops may round that differently from
    one release to the next)."""
    saved = np.load(FIXTURE.with_suffix(".npz"))
    ids = saved["ids"].tolist()
    store = LogitStore.open(str(FIXTURE))
    assert store.meta["format_version"] == 1 and store.views is None and store.num_views == 1
    as_saved = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    as_saved(store.read(ids, ["framewise"]), saved["framewise_clip"])
    as_saved(store.read(ids, ["framewise"], level="frame"), saved["framewise_frame"])
    as_saved(store.read(ids, ["plain"]), saved["plain_clip"])
    as_saved(store.read(ids, space="prob"), saved["ensemble_prob"])
    as_saved(store.read(ids, ["framewise"], views=np.zeros(len(ids), np.int64)), saved["framewise_clip"])
    info = store.info()
    assert info["num_views"] == 1 and info["views"] is None
    assert info["teachers"]["framewise"]["shapes"] == {"clip": [10, 4], "frame": [10, 6, 4]}
    assert store.verify() == []
    with pytest.raises(StoreError, match="has no views"):
        store.view_params(ids)


def test_single_view_stores_keep_the_original_layout(tmp_path):
    fixture = tmp_path / "format1"
    shutil.copytree(FIXTURE, fixture)
    clip, frame = view_logits(views=1)
    url = str(tmp_path / "new.zarr")
    store = new_store(url, views=None)
    fill(store, "t", clip[:, 0], frame[:, 0])
    root = raw_group(url)
    assert root.attrs["logit_store"]["format_version"] == 1 and "views" not in root.attrs["logit_store"]
    assert "view_params" not in root and "views" not in root["teachers/t"].attrs["teacher"]
    shapes = {name: (root[f"teachers/t/{name}"].shape, root[f"teachers/t/{name}"].chunks)
              for name in ("clip", "clip_range", "frame", "frame_range")}
    old = raw_group(str(fixture))
    old_shapes = {name: (old[f"teachers/framewise/{name}"].shape, old[f"teachers/framewise/{name}"].chunks)
                  for name in shapes}
    assert {k: len(v[0]) for k, v in shapes.items()} == {k: len(v[0]) for k, v in old_shapes.items()} \
        == {"clip": 2, "clip_range": 3, "frame": 3, "frame_range": 4}
    assert shapes["clip"] == ((N, C), (CHUNK, C)) and shapes["frame"][0] == (N, T, C)
    assert set(root["teachers/t"].attrs["teacher"]) == set(old["teachers/framewise"].attrs["teacher"])
    assert store.read(IDS).shape == (N, C) and store.read(IDS, views=0).shape == (N, C)
    with pytest.raises(StoreError, match=r"\[0, 1\)"):
        store.read(IDS[:1], views=[1])
    # a resumed job re-adds its teacher to the old store: the same settings, no conflict
    LogitStore.open(str(fixture), mode="r+").add_teacher("plain", codec="f16", attrs={"checkpoint_sha256": "b"})


def test_a_one_view_configuration_keeps_the_single_view_layout(url):
    config = {**CONFIG, "count": 1}
    store = LogitStore.create(url, IDS, CLASSES, dataset="d", dataset_fingerprint="fp", chunk_size=CHUNK,
                              views=config, view_param_names=PARAMS)
    clip, _ = view_logits(views=1)
    params = view_params(views=1)
    fill(store, "t", clip[:, 0], params=params)
    assert store.meta["format_version"] == 1 and store.num_views == 1 and store.views == config
    assert store.read(IDS).shape == (N, C) and store.view_params(IDS).shape == (N, 1, 4)
    np.testing.assert_array_equal(store.view_params(IDS, 0), params[:, 0])


def test_view_stores_are_format_version_2_and_teachers_record_their_views(url):
    store = new_store(url)
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0)
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0)  # a resumed job: no conflict
    reopened = LogitStore.open(url)
    assert reopened.meta["format_version"] == 2 and reopened.num_views == K and reopened.views == CONFIG
    assert reopened.view_param_names == PARAMS and reopened.teacher_info("t")["views"] == K
    info = reopened.info()
    assert info["views"] == {"count": K, "kinds": ["dir", "gain"], "ir_fingerprint": "ab12", "params": PARAMS,
                             "config": CONFIG}
    assert info["teachers"]["t"]["shapes"] == {"clip": [N, K, C], "frame": [N, K, T, C]}


def test_bytes_per_view_logit_under_q8_match_single_view_stores(tmp_path):
    n, c, k, chunk = 2048, 64, 4, 512
    clip, _ = view_logits(7, n=n, views=k, classes=c)
    ids = [f"y{i}" for i in range(n)]
    config = {**CONFIG, "count": k}
    multi = LogitStore.create(str(tmp_path / "multi.zarr"), ids, [f"c{i}" for i in range(c)], dataset="d",
                              dataset_fingerprint="f", chunk_size=chunk, views=config, view_param_names=PARAMS)
    fill(multi, "t", clip, params=view_params(n=n, views=k), codec="q8")
    multi_info = multi.info()["teachers"]["t"]
    singles = []
    for v in range(k):
        single = LogitStore.create(str(tmp_path / f"single{v}.zarr"), ids, [f"c{i}" for i in range(c)],
                                   dataset="d", dataset_fingerprint="f", chunk_size=chunk)
        fill(single, "t", clip[:, v], codec="q8")
        singles.append(single.info()["teachers"]["t"]["bytes_per_logit"])
    # bytes_per_logit of a view store counts every view's logits: comparable to single views as it is
    assert multi_info["bytes_per_logit"] <= 1.03 * np.mean(singles)
    assert multi_info["bytes_per_logit"] >= 0.8 * np.mean(singles)
    assert multi_info["bytes_per_logit"] < 1.0


def test_view_params_are_chunk_aligned_and_checked(url):
    clip, _ = view_logits()
    params = view_params()
    store = new_store(url)
    store.add_teacher("a", codec="f16")
    store.add_teacher("b", codec="f16")
    array = raw_group(url)["view_params"]
    assert array.shape == (N, K, 4) and array.chunks == (CHUNK, K, 4)
    rows = store.chunk_rows(1)
    store.write_chunk("a", 1, clip[rows], view_params=params[rows])
    keys = {k for k in _keys(url, "view_params") if k != "zarr.json"}
    assert keys == {"c/1/0/0"}  # one object per store chunk: writers of other chunks never touch it
    np.testing.assert_array_equal(store.view_params(IDS[16:32]), params[16:32])
    with pytest.raises(UnwrittenViews, match="no view parameters for 16 requested clip"):
        store.view_params(IDS[:20])
    # another teacher: the same parameters again, or none, are fine; other parameters are refused
    store.write_chunk("b", 1, clip[rows], view_params=params[rows])
    store.write_chunk("b", 1, clip[rows])
    other = params[rows].copy()
    other[3, 2, 2] += 1.0
    with pytest.raises(ViewMismatch, match="chunk 1 already holds other view parameters for 1 clip.*'clip-019'"):
        store.write_chunk("b", 1, clip[rows], view_params=other)
    with pytest.raises(InvalidLogits, match="chunk 0 has no view parameters yet"):
        store.write_chunk("b", 0, clip[store.chunk_rows(0)])
    assert store.done_chunks("b").tolist() == [False, True, False]
    bad = params[store.chunk_rows(0)].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidLogits, match="view_params holds NaN"):
        store.write_chunk("a", 0, clip[store.chunk_rows(0)], view_params=bad)
    with pytest.raises(InvalidLogits, match=r"view_params has shape \(16, 3, 3\), expected \(16, 3, 4\)"):
        store.write_chunk("a", 0, clip[store.chunk_rows(0)], view_params=params[store.chunk_rows(0), :, :3])
    with pytest.raises(InvalidLogits, match=r"clip_logits has shape \(16, 8\), expected \(16, 3, 8\)"):
        store.write_chunk("a", 0, clip[store.chunk_rows(0), 0], view_params=params[store.chunk_rows(0)])
    assert store.done_chunks("a").tolist() == [False, True, False]


def _keys(url: str, array: str) -> set[str]:
    return storage.list_keys(raw_group(url)[array])


def test_a_clip_is_valid_or_not_with_all_its_views(url):
    clip, frame = view_logits()
    params = view_params()
    store = new_store(url)
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0)
    rows = store.chunk_rows(0)
    c, f = clip[rows].copy(), frame[rows].copy()
    c[2, 1] = np.nan  # one view of clip 2 failed: the whole clip is invalid
    with pytest.raises(InvalidLogits, match="clip_logits holds NaN/inf for 1 clip"):
        store.write_chunk("t", 0, c, f, view_params=params[rows])
    valid = np.ones(len(c), bool)
    valid[2] = False
    store.write_chunk("t", 0, c, f, valid=valid, failures={IDS[2]: "decode error"}, view_params=params[rows])
    np.testing.assert_allclose(store.read(IDS[:2], views=[1, 2]), clip[[0, 1], [1, 2]], atol=0.1)
    assert store.failures("t") == {IDS[2]: "decode error"}


def test_view_params_written_by_another_process_are_read(url):
    clip, _ = view_logits()
    params = view_params()
    store = new_store(url)
    store.add_teacher("t", codec="f32")
    store.write_chunk("t", 0, clip[:CHUNK], view_params=params[:CHUNK])
    reader = LogitStore.open(url)
    np.testing.assert_array_equal(reader.view_params(IDS[:4]), params[:4])  # decodes the array (chunk 1 NaN)
    rows = store.chunk_rows(1)
    store.write_chunk("t", 1, clip[rows], view_params=params[rows])
    np.testing.assert_array_equal(reader.view_params(IDS[20:24], views=1), params[20:24, 1])
    np.testing.assert_array_equal(reader.read(IDS[20:24], views=[0, 1, 2, 0]), clip[20:24][np.arange(4), [0, 1, 2, 0]])


def test_a_different_view_configuration_is_refused(url):
    store = new_store(url)
    store.set_views(dict(CONFIG), PARAMS)  # the same views again (a resumed job): a no-op
    store.check_views(CONFIG, PARAMS)
    with pytest.raises(ViewMismatch, match=r"other views \(count: stored 3, given 4; seed: stored 3, given 4\)"):
        store.set_views({**CONFIG, "count": 4, "seed": 4}, PARAMS)
    with pytest.raises(ViewMismatch, match="ir_fingerprint: stored 'ab12', given 'other'"):
        LogitStore.open(url, mode="r+").check_views({**CONFIG, "ir_fingerprint": "other"}, PARAMS)
    with pytest.raises(ViewMismatch, match="view_param_names"):
        store.check_views(CONFIG, PARAMS[::-1])
    with pytest.raises(ViewMismatch, match="holds logits of 3 views per clip, the job asks for none"):
        store.check_views(None)
    assert LogitStore.open(url).views == CONFIG  # nothing changed
    plain = new_store(f"memory://plain-{uuid.uuid4().hex}", views=None)
    plain.check_views(None)
    with pytest.raises(ViewMismatch, match="holds logits of no views"):
        plain.check_views(CONFIG, PARAMS)
    plain.add_teacher("t", codec="q8")
    with pytest.raises(ViewMismatch, match="holds teachers written without views"):
        plain.set_views(CONFIG, PARAMS)
    assert plain.views is None


def test_views_of_a_store_without_teachers_can_be_set_later(url):
    store = new_store(url, views=None)
    store.set_views(CONFIG, PARAMS)
    assert LogitStore.open(url).num_views == K and LogitStore.open(url).meta["format_version"] == 2
    with pytest.raises(StoreError, match="open read-only"):
        LogitStore.open(url).set_views(CONFIG, PARAMS)


@pytest.mark.parametrize("config, names, message", [
    ({"count": 0}, PARAMS, "needs 'count'"), ({"kinds": []}, PARAMS, "needs 'count'"),
    ({"count": True}, PARAMS, "needs 'count'"), ([3], PARAMS, "a view configuration is a dict"),
    ({"count": 2, "x": object()}, PARAMS, "JSON-serialisable"), ({"count": 2}, None, "view_param_names"),
    ({"count": 2}, ["a", "a"], "view_param_names")])
def test_unusable_view_configurations_are_one_line_errors(url, config, names, message):
    with pytest.raises(StoreError, match=message) as err:
        LogitStore.create(url, IDS, CLASSES, dataset="d", dataset_fingerprint="f", views=config,
                          view_param_names=names)
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match="give views too"):
        LogitStore.create(url, IDS, CLASSES, dataset="d", dataset_fingerprint="f", view_param_names=PARAMS)


def test_write_chunk_refuses_view_params_without_views(url):
    store = new_store(url, views=None)
    store.add_teacher("t", codec="f32")
    with pytest.raises(InvalidLogits, match="has no views; write_chunk takes no view_params"):
        store.write_chunk("t", 0, np.zeros((CHUNK, C)), view_params=np.zeros((CHUNK, 1, 4)))


def test_verify_finds_missing_and_corrupt_view_params(tmp_path):
    url = str(tmp_path / "s.zarr")
    clip, frame = view_logits()
    fill(new_store(url), "t", clip, frame, view_params(), codec="q8")
    assert LogitStore.open(url).verify() == []
    base = Path(url) / "view_params" / "c"
    (base / "0" / "0" / "0").unlink()
    data = bytearray((base / "2" / "0" / "0").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (base / "2" / "0" / "0").write_bytes(bytes(data))
    problems = LogitStore.open(url).verify()
    assert [(p.kind, p.chunk) for p in problems] == [("views", 0), ("views", 2)]
    assert "missing although a teacher marked the chunk done" in problems[0].message
    assert "cannot be decoded" in problems[1].message


def write_view_chunks(url: str, chunks: list[int]) -> None:
    store = LogitStore.open(url, mode="r+")
    clip, frame = view_logits(2)
    params = view_params(2)
    for k in chunks:
        rows = store.chunk_rows(k)
        store.write_chunk("t", k, clip[rows], frame[rows], view_params=params[rows])


def test_two_processes_write_different_chunks_of_a_view_store(tmp_path):
    url = str(tmp_path / "s.zarr")
    store = new_store(url)
    store.add_teacher("t", codec="q8", frames=T, frames_per_second=25.0)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_view_chunks, args=(url, list(range(i, store.num_chunks, 2)))) for i in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reopened = LogitStore.open(url)
    assert reopened.done_chunks("t").all() and reopened.verify() == []
    clip, frame = view_logits(2)
    np.testing.assert_array_equal(reopened.view_params(IDS), view_params(2))
    assert np.abs(sigmoid(reopened.read(IDS)) - sigmoid(clip)).max() <= 0.004
    assert np.abs(sigmoid(reopened.read(IDS, level="frame")) - sigmoid(frame)).max() <= 0.004
    views = np.arange(N) % K
    np.testing.assert_array_equal(reopened.read(IDS, views=views), reopened.read(IDS)[np.arange(N), views])
