"""The ``topk`` codec: the k largest logits of each view and their classes, the rest as a shifted class profile."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from logit_store import LogitStore, StoreError, get_codec
from logit_store.topk import TopKCodec, pack_bits, unpack_bits

BLOCK = 8


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(-1, keepdims=True)
    return top[..., 0] + np.log(np.exp(z - top).sum(-1))


def _u(z, scale: float = 1.0) -> np.ndarray:
    return np.arcsinh(np.asarray(z, np.float64) / scale)


@st.composite
def logit_rows(draw):
    c, keep = draw(st.integers(6, 40)), draw(st.integers(1, 5))
    rows = draw(st.integers(1, 3 * BLOCK))
    x = draw(hnp.arrays(np.float32, (rows, c), elements=st.floats(-30, 30, width=32), unique=False))
    return x, keep


@given(st.integers(1, 16).flatmap(lambda bits: st.tuples(
    st.just(bits), hnp.arrays(np.uint32, st.tuples(st.integers(1, 4), st.integers(1, 30)),
                              elements=st.integers(0, 2**bits - 1)))))
def test_bit_packing_round_trips(case):
    bits, values = case
    packed = pack_bits(values, bits)
    assert packed.shape[-1] == -(-values.shape[-1] * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, values.shape[-1], bits), values)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(logit_rows(), st.sampled_from(["softmax", "sigmoid"]), st.sampled_from([4, 8, 12]))
def test_topk_round_trips_within_its_bound(case, rest, bits):
    """The kept classes are the k largest, each within half a code step (in asinh) of its logit; the others
    keep their softmax mass (rest=softmax) or mean sigmoid (rest=sigmoid) up to the float16 offset's rounding."""
    x, k = case
    codec = TopKCodec(k=k, bits=bits, rest=rest).for_classes(x.shape[1])
    stored, profile = codec.encode(x, 0, BLOCK)
    got = codec.decode(stored, profile, 0, BLOCK)
    assert stored.shape == (len(x), codec.stored_width(x.shape[1])) and got.shape == x.shape

    order = np.argsort(-x, axis=-1, kind="stable")
    top, others = order[:, :k], order[:, k:]
    kept, orig = np.take_along_axis(got, top, -1), np.take_along_axis(x, top, -1)
    lo16 = np.float16(orig[:, -1:]).astype(np.float64) - np.abs(orig[:, -1:]) * 2**-10
    hi16 = np.float16(orig[:, :1]).astype(np.float64) + np.abs(orig[:, :1]) * 2**-10
    half_step = (_u(hi16) - _u(lo16)) / (2**bits - 1) / 2 + 1e-5
    assert (np.abs(_u(kept) - _u(orig)) <= half_step + 2e-3).all()

    rest_got = np.take_along_axis(got, others, -1).astype(np.float64)
    rest_orig = np.take_along_axis(x, others, -1).astype(np.float64)
    if rest == "softmax":
        err = np.abs(_logsumexp(rest_got) - _logsumexp(rest_orig))
    else:
        p = lambda z: 0.5 * (1 + np.tanh(z / 2))
        err = np.abs(p(rest_got).mean(-1) - p(rest_orig).mean(-1)) / np.maximum(p(rest_orig).mean(-1), 1e-30)
    # the offset is float16: it rounds at the size of the offset itself, a log-sum-exp of the row's dropped classes
    # less one of the block's class profile (found by hypothesis: a block whose other row peaks at 20)
    offset_size = np.abs(rest_orig).max(-1) + np.abs(x).max() + np.log(x.shape[1])
    assert (err <= np.maximum(offset_size, 1.0) * 2**-10 + 1e-4).all()


def test_topk_keeps_a_view_of_527_classes_below_cefs_84_bytes():
    codec = get_codec({"name": "topk", "k": 20}).for_classes(527)
    assert codec.stored_width(527) == 25 + 20 + 6  # 10-bit indices, 8-bit codes, two bounds and the offset
    assert codec.stored_width(527) + 527 * 2 / 128 < 84  # with the class profile of 128-clip blocks


def test_topk_refuses_k_not_below_the_class_count():
    with pytest.raises(StoreError, match="k=20 of 10 classes"):
        get_codec({"name": "topk", "k": 20}).for_classes(10)
    with pytest.raises(StoreError, match="rest must be one of"):
        get_codec({"name": "topk", "rest": "uniform"})


def test_topk_store_with_views_reads_dense_logits(tmp_path):
    n, views, classes = 40, 4, 60
    rng = np.random.default_rng(0)
    base = rng.normal(-8, 2, (n, 1, classes)) + (rng.random((n, 1, classes)) < 0.05) * 10
    logits = (base + rng.normal(0, 0.5, (n, views, classes))).astype(np.float32)
    store = LogitStore.create(str(tmp_path / "s.zarr"), [f"c{i}" for i in range(n)],
                              [f"k{i}" for i in range(classes)], dataset="demo", dataset_fingerprint="fp",
                              chunk_size=16, views={"count": views}, view_param_names=["gain_db"])
    store.add_teacher("t", codec={"name": "topk", "k": 8})
    for chunk in range(store.num_chunks):
        rows = store.chunk_rows(chunk)
        store.write_chunk("t", chunk, logits[rows], view_params=np.zeros((rows.stop - rows.start, views, 1)))
    reopened = LogitStore.open(str(tmp_path / "s.zarr"))
    assert reopened.verify() == []
    info = reopened.info()["teachers"]["t"]
    assert info["codec"] == "topk" and info["shapes"]["clip"] == [n, views, classes]
    ids = [f"c{i}" for i in (3, 17, 39)]
    picks = np.array([0, 3, 2])
    got = reopened.read(ids, teachers="t", views=picks)
    want = logits[[3, 17, 39], picks]
    assert got.shape == want.shape
    top_got, top_want = np.argsort(-got, -1)[:, :8], np.argsort(-want, -1)[:, :8]
    np.testing.assert_array_equal(np.sort(top_got, -1), np.sort(top_want, -1))
    np.testing.assert_allclose(np.take_along_axis(got, top_want, -1), np.take_along_axis(want, top_want, -1),
                               atol=0.05)
