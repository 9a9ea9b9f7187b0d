"""The logit store across processes: concurrent writers, a killed and resumed writer, corruption, workers."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from logit_store import LogitStore

N, C, CHUNK = 200, 10, 25
IDS = [f"id{i}" for i in range(N)]


def chunk_logits(chunk: int) -> np.ndarray:
    """Deterministic logits of one chunk, so any process can produce (and a test can check) them."""
    return np.random.default_rng(chunk).normal(-4, 3, (CHUNK, C)).astype(np.float32)


def expected() -> np.ndarray:
    return np.concatenate([chunk_logits(k) for k in range(N // CHUNK)])


def make_store(path: Path) -> LogitStore:
    store = LogitStore.create(str(path), IDS, [f"c{i}" for i in range(C)], dataset="d", dataset_fingerprint="f",
                              chunk_size=CHUNK)
    store.add_teacher("t", codec="f32", attrs={"checkpoint_sha256": "s"})
    return store


def write_chunks(url: str, chunks: list[int], log: str | None = None) -> None:
    store = LogitStore.open(url, mode="r+")
    for k in chunks:
        if store.done_chunks("t")[k]:
            continue
        store.write_chunk("t", k, chunk_logits(k))
        if log:
            with open(log, "a") as f:
                f.write(f"{k}\n")


def test_two_spawned_writers_on_disjoint_chunks(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_chunks, args=(store.url, list(range(i, store.num_chunks, 2)))) for i in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reopened = LogitStore.open(store.url)
    assert reopened.done_chunks("t").all() and reopened.verify() == []
    np.testing.assert_array_equal(reopened.read(IDS), expected())


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import numpy as np
    from logit_store import LogitStore
    from test_logit_store_processes import chunk_logits
    store = LogitStore.open({url!r}, mode="r+")
    for k in range(store.num_chunks):
        if k == {die_at}:
            store._teacher_group("t")["clip"][store.chunk_rows(k)] = chunk_logits(k)  # data, but no done record
            os.kill(os.getpid(), 9)
        store.write_chunk("t", k, chunk_logits(k))
        with open({log!r}, "a") as f:
            f.write(f"{{k}}\\n")
""")


def test_killed_writer_resumes_without_recomputing(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    log = tmp_path / "writes.log"
    script = KILLED_WRITER.format(repo=str(Path(__file__).parents[2]), tests=str(Path(__file__).parent),
                                  url=store.url, die_at=5, log=str(log))
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert LogitStore.open(store.url).done_chunks("t").tolist() == [True] * 5 + [False] * 3
    assert [p.kind for p in LogitStore.open(store.url).verify()] == ["incomplete"]
    write_chunks(store.url, list(range(store.num_chunks)), str(log))
    assert [int(x) for x in log.read_text().split()] == list(range(8))  # 0-4 once before the kill, 5-7 after
    reopened = LogitStore.open(store.url)
    assert reopened.verify() == []
    np.testing.assert_array_equal(reopened.read(IDS), expected())


def test_corrupt_and_missing_chunk_objects_are_found(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    write_chunks(store.url, list(range(store.num_chunks)))
    chunk_file = Path(store.url) / "teachers" / "t" / "clip" / "c" / "3" / "0"
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(data))
    (Path(store.url) / "teachers" / "t" / "clip" / "c" / "6" / "0").unlink()
    problems = LogitStore.open(store.url).verify()
    assert [(p.kind, p.chunk) for p in problems] == [("corrupt-chunk", 3), ("missing-chunk", 6)]
    assert all(p.teacher == "t" for p in problems) and "chunk 3" in str(problems[0])


def read_in_worker(payload: bytes, ids: list[str], queue) -> None:
    store = pickle.loads(payload)
    queue.put((os.getpid(), store.read(ids).tolist()))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pickled_store_reads_in_worker_processes(tmp_path, method):
    store = make_store(tmp_path / "s.zarr")
    write_chunks(store.url, list(range(store.num_chunks)))
    reader = LogitStore.open(store.url)
    reader.read(IDS[:3])  # the parent holds zarr handles and a decoded cache before the workers start
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    ids = IDS[::17]
    procs = [ctx.Process(target=read_in_worker, args=(pickle.dumps(reader), ids, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for pid, rows in results:
        assert pid != os.getpid()
        np.testing.assert_array_equal(np.array(rows, np.float32), expected()[::17])


def test_forked_child_reopens_the_parents_handle(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    write_chunks(store.url, list(range(store.num_chunks)))
    reader = LogitStore.open(store.url)
    reader.read(IDS[:3])
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=lambda: queue.put(json.dumps(reader.read(IDS[-2:]).tolist())))
    proc.start()
    got = np.array(json.loads(queue.get(timeout=60)), np.float32)
    proc.join(60)
    np.testing.assert_array_equal(got, expected()[-2:])
