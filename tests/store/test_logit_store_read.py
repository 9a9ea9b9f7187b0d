"""Read path of the logit store: the id -> row lookup is exact for every form of ids, and validity caching
never hides unwritten rows nor rows that other writers finished later."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from logit_store import LogitStore, MissingIds, UnwrittenRows

C, CHUNK = 5, 32


def make_store(ids: list[str], *, write_chunks: list[int] | None = None) -> tuple[LogitStore, np.ndarray]:
    """A store whose row ``i`` holds the value ``i`` in every class (so a wrong row cannot pass unseen)."""
    store = LogitStore.create(f"memory://read-{uuid.uuid4().hex}", ids, [f"c{i}" for i in range(C)],
                              dataset="t", dataset_fingerprint="fp", chunk_size=CHUNK)
    store.add_teacher("t", codec="f32")
    values = np.repeat(np.arange(len(ids), dtype=np.float32)[:, None], C, axis=1)
    for k in range(store.num_chunks) if write_chunks is None else write_chunks:
        store.write_chunk("t", k, values[store.chunk_rows(k)])
    return LogitStore.open(store.url), values


def test_random_ids_resolve_exactly_in_every_input_form():
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcXYZ_-0123456789é"))
    ids = list(dict.fromkeys("".join(rng.choice(alphabet, rng.integers(1, 24))) for _ in range(3000)))
    store, _ = make_store(ids)
    rows = rng.permutation(len(ids))[:200]
    picked = [ids[i] for i in rows]
    for form in (picked, tuple(picked), np.array(picked), np.array(picked, dtype=f"U{40}"),
                 [np.str_(x) for x in picked], iter(picked)):
        np.testing.assert_array_equal(store.read(form, ["t"])[:, 0], rows)
    np.testing.assert_array_equal(store.rows_of(picked), rows)


@pytest.mark.parametrize("bad", [
    "clip-0001x",   # longer than every stored id: must not match its prefix
    "clip-0001\x00",  # trailing NUL, which NumPy strings drop
    "clip-000",     # a prefix of a stored id
    "",
])
def test_near_miss_ids_are_missing_not_another_row(bad):
    ids = [f"clip-{i:04d}" for i in range(100)]
    store, _ = make_store(ids)
    with pytest.raises(MissingIds, match=r"1 of 3 clip ids are not in the store") as err:
        store.read(["clip-0003", bad, "clip-0050"], ["t"])
    assert err.value.ids == [bad]
    if not bad.endswith("\x00"):  # NumPy strings cannot hold trailing NULs: np.array drops them
        with pytest.raises(MissingIds):
            store.read(np.array(["clip-0003", bad]), ["t"])


@pytest.mark.parametrize("bad", [7, b"clip-0001", None])
def test_ids_that_are_not_strings_are_missing(bad):
    store, _ = make_store([f"clip-{i:04d}" for i in range(40)])
    with pytest.raises(MissingIds) as err:
        store.read(["clip-0001", bad], ["t"])
    assert err.value.ids == [bad]


def test_stored_ids_with_nul_characters_still_read_exactly():
    ids = ["a", "a\x00", "b\x00c", "b"]
    store, _ = make_store(ids)
    np.testing.assert_array_equal(store.read(["a\x00", "a", "b", "b\x00c"], ["t"])[:, 0], [1, 0, 3, 2])


def test_empty_batch_reads_no_rows():
    store, _ = make_store([f"clip-{i:04d}" for i in range(40)])
    assert store.read([], ["t"]).shape == (0, C)


def test_rows_finished_by_another_writer_become_readable():
    ids = [f"clip-{i:04d}" for i in range(3 * CHUNK)]
    reader, values = make_store(ids, write_chunks=[0, 2])
    np.testing.assert_array_equal(reader.read(ids[:CHUNK], ["t"]), values[:CHUNK])  # caches the done records
    with pytest.raises(UnwrittenRows, match=f"clip-{CHUNK:04d}"):
        reader.read([ids[CHUNK], ids[0]], ["t"])
    writer = LogitStore.open(reader.url, "r+")
    writer.write_chunk("t", 1, values[CHUNK:2 * CHUNK])
    np.testing.assert_array_equal(reader.read([ids[CHUNK], ids[0]], ["t"]), values[[CHUNK, 0]])


def test_invalid_rows_stay_unreadable_after_reads_of_valid_ones():
    ids = [f"clip-{i:04d}" for i in range(CHUNK)]
    store = LogitStore.create(f"memory://read-{uuid.uuid4().hex}", ids, [f"c{i}" for i in range(C)],
                              dataset="t", dataset_fingerprint="fp", chunk_size=CHUNK)
    store.add_teacher("t", codec="q8")
    valid = np.ones(CHUNK, bool)
    valid[5] = False
    store.write_chunk("t", 0, np.zeros((CHUNK, C), np.float32), valid=valid, failures={ids[5]: "empty file"})
    reader = LogitStore.open(store.url)
    for _ in range(2):
        assert reader.read(ids[:5], ["t"]).shape == (5, C)
        with pytest.raises(UnwrittenRows, match="empty file"):
            reader.read(ids[4:7], ["t"])
