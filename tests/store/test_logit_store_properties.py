"""Properties of the logit store's building blocks, checked by hypothesis on arbitrary inputs.

- Codecs: any finite float32 logits, any block size, any axis. ``f32`` round-trips exactly, ``f16`` to the
  nearest float16 (saturating at the largest finite one), and ``q8``'s error in probability space stays
  within the bound its step size implies (so the ``max |Δsigmoid| <= 0.004`` of BENCHMARKS.md follows
  from the step size for logits within +-19, rather than from a lucky sample).
- ``qb`` (frame logits ``[clips, frames, classes]``, any frame block): its sigmoid error stays within its
  budget wherever fewer than 255 levels sufficed, and within ``q8``'s step bound where they did not; every
  block's mean softmax KL at each of its temperatures stays within its budget unless every class of the
  block already has 255 levels; the stored levels and ranges are what the decoder needs, nothing more.
- Id index: any unique unicode ids (different lengths, trailing NULs, non-BMP characters), any batch of
  queries with repeats and absent ids: exactly the rows a dict lookup gives, never a wrong row, and
  ``MissingIds`` naming the absent ids in order.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from logit_store import MissingIds, StoreError, get_codec
from logit_store.index import IdIndex

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F16_MAX = float(np.finfo(np.float16).max)
EPS32 = float(np.finfo(np.float32).eps)


def sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-z) overflows to inf for z < -709: sigmoid 0, as it should
        return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


@st.composite
def logit_arrays(draw, elements=None):
    """(x, axis, block): float32 arrays of 1-3 dimensions with finite values, a block size and an axis."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    elements = elements if elements is not None else st.one_of(
        st.floats(-30, 30, width=32),  # where logits live
        st.floats(width=32, allow_nan=False, allow_infinity=False),  # anything finite, up to +-3.4e38
    )
    x = draw(hnp.arrays(np.float32, shape, elements=elements))
    axis = draw(st.integers(0, len(shape) - 1))
    block = draw(st.integers(1, max(1, shape[axis]) + 2))
    return x, axis, block


def per_entry(ranges: np.ndarray, axis: int, block: int, length: int) -> np.ndarray:
    """Per-block values ``ranges[..., j, ...]`` (block ``j`` along ``axis``) repeated for every entry."""
    return np.take(ranges, np.arange(length) // block, axis=axis)


@functools.cache
def sigmoid_slope_in_u(scale: float) -> float:
    """sup over z of |d sigmoid / du| for u = asinh(z / scale): sigmoid'(z) sqrt(scale^2 + z^2) (about 0.28
    for scale 1, at |z| ~ 1.2; beyond |z| = 50 it is below 1e-19), on a fine grid, rounded up."""
    z = np.linspace(-50, 50, 1_000_001)
    return float((sigmoid(z) * (1 - sigmoid(z)) * np.sqrt(scale**2 + z**2)).max()) * (1 + 1e-6)


@SETTINGS
@given(logit_arrays())
def test_f32_round_trip_is_exact(case):
    x, axis, block = case
    codec = get_codec("f32")
    stored, ranges = codec.encode(x, axis, block)
    assert ranges is None
    np.testing.assert_array_equal(codec.decode(stored, ranges, axis, block), x)


@SETTINGS
@given(logit_arrays())
def test_f16_round_trip_is_the_nearest_float16_saturated(case):
    x, axis, block = case
    codec = get_codec("f16")
    stored, _ = codec.encode(x, axis, block)
    got = codec.decode(stored, None, axis, block)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.clip(x, -F16_MAX, F16_MAX).astype(np.float16).astype(np.float32))
    exact = np.clip(x, -F16_MAX, F16_MAX).astype(np.float16).astype(np.float32)  # float16 values: unchanged
    np.testing.assert_array_equal(codec.decode(codec.encode(exact, axis, block)[0], None, axis, block), exact)


def check_q8(x: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-trip ``x`` through q8; assert the step-size error bound; return |Δsigmoid| and the bound."""
    codec = get_codec("q8")
    codes, ranges = codec.encode(x, axis, block)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert ranges.dtype == np.float16 and np.isfinite(ranges).all()
    got = codec.decode(codes, ranges, axis, block)
    assert got.dtype == np.float32 and got.shape == x.shape and np.isfinite(got).all()
    # levels are uniform in u = asinh(z / scale) over each block's [lo, hi]: |Δu| <= step / 2, plus a few
    # float32 ulps of u from evaluating asinh, the step and sinh; sigmoid changes by at most its slope in u
    u = np.arcsinh(ranges.astype(np.float64) / codec.scale)
    step = per_entry((u[1] - u[0]) / codec.LEVELS, axis, block, x.shape[axis])
    u_max = per_entry(np.maximum(np.abs(u[0]), np.abs(u[1])), axis, block, x.shape[axis])
    bound = sigmoid_slope_in_u(codec.scale) * (step / 2 + 16 * EPS32 * np.maximum(1.0, u_max))
    dsig = np.abs(sigmoid(got) - sigmoid(x))
    assert (dsig <= bound).all(), float((dsig - bound).max())
    return dsig, bound


@SETTINGS
@given(logit_arrays())
def test_q8_error_stays_within_its_step_size_bound(case):
    check_q8(*case)


@SETTINGS
@given(logit_arrays(elements=st.floats(-19, 19, width=32)))
def test_q8_step_size_implies_the_documented_sigmoid_bound(case):
    """Within +-19 the widest block spans 2 asinh(19) in u, so the bound itself is below 0.004."""
    dsig, bound = check_q8(*case)
    assert bound.max() <= 0.004 and dsig.max() <= 0.004


def test_q8_saturates_logits_beyond_float16_instead_of_spoiling_the_block():
    x = np.array([[1e5, 0.5], [-3e38, -2.0], [3.0, 65519.0]], np.float32)
    dsig, _ = check_q8(x, 0, 3)
    assert dsig.max() < 0.004


# --- qb ---------------------------------------------------------------------------------------------------------------
@st.composite
def frame_arrays(draw, elements=None):
    """(x, block): float32 frame logits [clips, frames, classes] and a frame block size."""
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 9)))
    elements = elements if elements is not None else st.one_of(
        st.floats(-30, 30, width=32),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
    )
    x = draw(hnp.arrays(np.float32, shape, elements=elements))
    return x, draw(st.integers(1, shape[1] + 2))


def block_mean_kl(x: np.ndarray, got: np.ndarray, t: float, block: int) -> np.ndarray:
    """Mean over each block of frames of the softmax KL(x || got) at temperature ``t``, in float64."""
    def log_softmax(z):
        z = np.asarray(z, np.float64) / t
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    la, lb = log_softmax(x), log_softmax(got)
    kl = (np.exp(la) * (la - lb)).sum(-1)
    return np.stack([kl[:, j:j + block].mean(1) for j in range(0, x.shape[1], block)], axis=1)


def check_qb(x: np.ndarray, block: int, **budget) -> tuple[np.ndarray, np.ndarray]:
    """Round-trip ``x`` through qb; assert its sigmoid and KL budgets; return |Δsigmoid| and the levels."""
    codec = get_codec({"name": "qb", **budget})
    stored, ranges = codec.encode(x, 1, block)
    assert stored.dtype == np.uint8 and stored.shape == x.shape
    assert ranges.dtype == np.float16 and ranges.shape == (3, x.shape[0], -(-x.shape[1] // block), x.shape[2])
    levels = ranges[2].astype(np.float64)
    assert np.isfinite(ranges).all() and (levels == np.rint(levels)).all() and levels.min() >= 1
    assert levels.max() <= codec.LEVELS
    got = codec.decode(stored, ranges, 1, block)
    assert got.dtype == np.float32 and got.shape == x.shape and np.isfinite(got).all()
    saturated = np.clip(x, -F16_MAX, F16_MAX)
    # sigmoid: within the budget where the budget's step fit in 255 levels; else q8's step-size bound
    u = np.arcsinh(ranges[:2].astype(np.float64) / codec.scale)
    step = per_entry((u[1] - u[0]) / levels, 1, block, x.shape[1])
    u_max = per_entry(np.maximum(np.abs(u[0]), np.abs(u[1])), 1, block, x.shape[1])
    slack = sigmoid_slope_in_u(codec.scale) * 16 * EPS32 * np.maximum(1.0, u_max)
    capped = per_entry(levels, 1, block, x.shape[1]) == codec.LEVELS
    bound = np.where(capped, np.maximum(codec.max_dsigmoid, sigmoid_slope_in_u(codec.scale) * step / 2),
                     codec.max_dsigmoid) + slack
    dsig = np.abs(sigmoid(got) - sigmoid(saturated))
    assert (dsig <= bound).all(), float((dsig - bound).max())
    # KL: every block within budget at every temperature, unless no class of the block can take more levels
    finest = (levels == codec.LEVELS).all(-1)
    for t in codec.temperatures:
        kl = block_mean_kl(saturated, got, t, block)
        assert ((kl <= codec.max_kl * (1 + 1e-4) + 1e-9) | finest).all(), (t, float(kl.max()))
    return dsig, levels


@SETTINGS
@given(frame_arrays())
def test_qb_keeps_its_sigmoid_and_kl_budgets_on_any_frames(case):
    check_qb(*case)


@SETTINGS
@given(frame_arrays(elements=st.floats(-19, 19, width=32)), st.sampled_from([1e-5, 1e-4, 1e-3]),
       st.sampled_from([0.001, 0.0038]))
def test_qb_budget_is_a_setting_and_logits_within_19_meet_the_sigmoid_bound(case, max_kl, max_dsigmoid):
    """Within +-19 even a block at 255 levels stays within 0.004 (``q8``'s bound), whatever the budget."""
    dsig, _ = check_qb(*case, max_kl=max_kl, max_dsigmoid=max_dsigmoid)
    assert dsig.max() <= max(max_dsigmoid, 0.004)


def test_qb_spends_its_budget_on_realistic_frames():
    """Smooth frame logits take few levels (coarse steps) and land close to, not over, the KL budget."""
    rng = np.random.default_rng(0)
    drift = np.cumsum(rng.normal(0, 0.25, (4, 250, 60)), axis=1)
    x = (rng.uniform(-12, -5, 60) + drift).astype(np.float32)
    x[:, 100:160, 3] += 10.0  # an event
    dsig, levels = check_qb(x, 250)
    codec = get_codec("qb")
    got = codec.decode(*codec.encode(x, 1, 250), 1, 250)
    kl = [block_mean_kl(x, got, t, 250).mean() for t in (1, 2)]
    assert 0.5 * codec.max_kl < max(kl) <= codec.max_kl
    assert np.median(levels) < 64 and dsig.max() <= codec.max_dsigmoid


def test_qb_refuses_clip_shaped_input_and_bad_settings():
    codec = get_codec("qb")
    with pytest.raises(StoreError, match="frame logits"):
        codec.encode(np.zeros((4, 5), np.float32), 0, 4)
    with pytest.raises(StoreError, match="max_kl > 0"):
        get_codec({"name": "qb", "max_kl": 0})
    with pytest.raises(StoreError, match="cannot take the settings"):
        get_codec({"name": "qb", "bits": 4})


# --- id index ------------------------------------------------------------------------------------------------------
ID_TEXT = st.one_of(
    st.text(max_size=10),  # any unicode: non-BMP characters, NULs anywhere, different lengths
    st.builds(lambda s, k: s + "\x00" * k, st.text(max_size=6), st.integers(1, 3)),  # trailing NULs
    st.text(alphabet=st.sampled_from(["a", "b", "\x00", "\U0001f600", "é"]), max_size=5),  # near misses
)


@st.composite
def ids_and_queries(draw):
    ids = draw(st.lists(ID_TEXT, min_size=1, max_size=60, unique=True))
    present = st.sampled_from(ids)
    queries = draw(st.lists(st.one_of(present, present, ID_TEXT), max_size=40))  # repeats, and maybe absent ids
    return ids, queries


@SETTINGS
@given(ids_and_queries())
def test_id_index_returns_exactly_the_dict_rows_or_names_the_missing(case):
    ids, queries = case
    exact = {cid: i for i, cid in enumerate(ids)}
    index = IdIndex(ids)
    found = index.find(queries)
    absent = [q for q in queries if q not in exact]
    if found is not None:  # the fast path never answers with a wrong row
        assert not absent and found.tolist() == [exact[q] for q in queries]
    if absent:
        with pytest.raises(MissingIds) as err:
            index.rows(queries)
        assert err.value.ids == absent
    else:
        rows = index.rows(queries)
        assert rows.dtype.kind == "i" and rows.tolist() == [exact[q] for q in queries]


@SETTINGS
@given(ids_and_queries())
def test_id_index_resolves_numpy_string_batches_like_their_elements(case):
    ids, queries = case
    exact = {cid: i for i, cid in enumerate(ids)}
    batch = np.array(queries, dtype=str)  # NumPy drops trailing NULs: the batch holds those strings
    elements = [str(q) for q in batch]
    index = IdIndex(ids)
    found = index.find(batch)
    absent = [q for q in elements if q not in exact]
    if found is not None:
        assert not absent and found.tolist() == [exact[q] for q in elements]
    if absent:
        with pytest.raises(MissingIds) as err:
            index.rows(batch)
        assert [str(q) for q in err.value.ids] == absent
    else:
        assert index.rows(batch).tolist() == [exact[q] for q in elements]
