"""kd teach end to end on demo data: all three tasks, resume after a kill, bad clips (corrupt, truncated, empty,
silent), worker-count invariance."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kd.core.checkpoints import TeacherSpec
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd_errors import KdError
from logit_store import LogitStore

pytestmark = pytest.mark.slow
CLI = [sys.executable, str(Path(__file__).resolve().parents[2] / "cli.py")]


def _teach(spec, store, tracking_uri, teachers=("passt_tiny",), **kw):
    cfg = TeachConfig(dataset=spec, store=str(store), teachers=tuple(TeacherSpec.parse(t) for t in teachers),
                      chunk_size=kw.pop("chunk_size", 8), tracking_uri=tracking_uri, **kw)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return run_teach(cfg)


def test_asc_ensemble_is_taught_verified_scored_and_tracked(demo_asc, tmp_path, tracking_uri):
    import mlflow

    store_path = tmp_path / "store.zarr"
    summary = _teach(demo_asc["spec"], store_path, tracking_uri, teachers=("passt_tiny", "ast_tiny"))
    store = LogitStore.open(str(store_path))
    assert store.teachers == ["ast_tiny", "passt_tiny"] or sorted(store.teachers) == ["ast_tiny", "passt_tiny"]
    assert summary.clips == len(store.clip_ids) == demo_asc["splits"]["train"]
    assert store.verify() == []
    assert set(summary.metrics) == {"passt_tiny", "ast_tiny", "ensemble"}
    assert {"accuracy", "acc_seen"} <= set(summary.metrics["ensemble"])
    logits = store.read(store.clip_ids[:5], teachers=["passt_tiny"])
    assert logits.shape == (5, 10) and np.isfinite(logits).all()
    run = mlflow.MlflowClient(tracking_uri).get_run(summary.run_id)
    assert run.data.tags["store"] == str(store_path)
    assert run.data.params["teachers"] == "passt_tiny,ast_tiny"
    assert "ensemble.accuracy" in run.data.metrics


def test_tagging_and_sed_stores_hold_clip_and_frame_logits(demo_tagging, demo_sed, tmp_path, tracking_uri):
    tagging = _teach(demo_tagging["spec"], tmp_path / "tag.zarr", tracking_uri, seconds=1.0)
    assert "mAP" in tagging.metrics["passt_tiny"]
    sed = _teach(demo_sed["spec"], tmp_path / "sed.zarr", tracking_uri, teachers=("passt_tiny_frame",))
    store = LogitStore.open(str(tmp_path / "sed.zarr"))
    info = store.teacher_info("passt_tiny_frame")
    frames = store.read(store.clip_ids[:3], teachers=["passt_tiny_frame"], level="frame")
    assert info["frames_per_second"] == 10 and frames.shape == (3, info["frames"], len(store.classes))
    assert 38 <= info["frames"] <= 40  # 4 s at 10 frames/s, less the patch overhang at the clip's end
    assert "frame_mAP" in sed.metrics["passt_tiny_frame"]
    assert store.verify() == []


def test_teachers_hear_the_whole_clip_whatever_their_context(demo_sed, tmp_path, tracking_uri):
    """4 s clips and a teacher with a 1 s context: the teacher windows the clip; nothing is cut or padded."""
    _teach(demo_sed["spec"], tmp_path / "sed.zarr", tracking_uri, teachers=("passt_tiny",))
    assert LogitStore.open(str(tmp_path / "sed.zarr")).teacher_info("passt_tiny")["clip_seconds"] == 4.0


def test_a_corrupt_clip_is_recorded_and_never_stored(demo_asc, tmp_path, tracking_uri):
    data_dir = tmp_path / "asc"
    shutil.copytree(demo_asc["path"], data_dir)
    from kd.data import open_dataset

    victim = open_dataset(f"tau22:{data_dir}").clips[3]
    Path(victim.source).write_bytes(b"RIFF not really a wave file")
    summary = _teach(f"tau22:{data_dir}", tmp_path / "s.zarr", tracking_uri)
    assert list(summary.failures) == [victim.id]
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert store.failures("passt_tiny") == summary.failures
    assert store.verify() == []
    with pytest.raises(Exception, match=victim.id):
        store.read([victim.id], teachers=["passt_tiny"])


def test_a_truncated_first_file_an_empty_and_a_silent_one_teach_to_completion(demo_asc, tmp_path, tracking_uri):
    """The first clip cut to 100 bytes (it still decodes, to a few samples) used to set the length of every clip
    and crash the mel frontend; now it is flagged too short, the empty and silent clips are recorded, the rest
    is stored at the dataset's 1 s."""
    import soundfile as sf

    from kd.data import open_dataset

    data_dir = tmp_path / "asc"
    shutil.copytree(demo_asc["path"], data_dir)
    clips = open_dataset(f"tau22:{data_dir}").clips
    first, empty, silent = clips[0], clips[9], clips[17]
    Path(first.source).write_bytes(Path(first.source).read_bytes()[:100])
    Path(empty.source).write_bytes(b"")
    sf.write(silent.source, np.zeros(44100, np.float32), 44100)
    summary = _teach(f"tau22:{data_dir}", tmp_path / "s.zarr", tracking_uri)
    assert set(summary.failures) == {first.id, empty.id, silent.id}
    assert summary.failures[first.id].startswith("too short")
    assert summary.failure_kinds == {"undecodable": 1, "too short": 1, "silent": 1}
    assert summary.written == {"passt_tiny": len(clips) - 3}
    assert summary.clip_lengths["seconds"] == 1.0 and summary.clip_lengths["chosen_by"] == "p90"
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert store.user_attrs["clip_lengths"]["too_short"] == 1 and store.user_attrs["clip_lengths"]["silent"] == 1
    assert store.teacher_info("passt_tiny")["clip_seconds"] == 1.0
    others = [c.id for c in clips if c.id not in summary.failures]
    assert np.isfinite(store.read(others, teachers=["passt_tiny"])).all() and store.verify() == []


def test_two_workers_write_the_same_store_as_one(demo_asc, tmp_path, tracking_uri):
    _teach(demo_asc["spec"], tmp_path / "one.zarr", tracking_uri, workers=1)
    _teach(demo_asc["spec"], tmp_path / "two.zarr", tracking_uri, workers=2)
    one, two = LogitStore.open(str(tmp_path / "one.zarr")), LogitStore.open(str(tmp_path / "two.zarr"))
    assert one.clip_ids == two.clip_ids
    np.testing.assert_array_equal(one.read(one.clip_ids, teachers=["passt_tiny"]),
                                  two.read(two.clip_ids, teachers=["passt_tiny"]))


def test_rerun_skips_finished_chunks_and_refuses_changes(demo_asc, tmp_path, tracking_uri):
    store = tmp_path / "s.zarr"
    first = _teach(demo_asc["spec"], store, tracking_uri)
    assert first.chunks_run == LogitStore.open(str(store)).num_chunks
    again = _teach(demo_asc["spec"], store, tracking_uri)
    assert again.chunks_run == 0 and again.chunks_skipped == first.chunks_run
    other = tmp_path / "other_teacher.pt"
    import torch

    from teachers import create_teacher

    torch.save(create_teacher("passt_tiny", num_classes=10).state_dict(), other)
    cfg = TeachConfig(dataset=demo_asc["spec"], store=str(store), teachers=(TeacherSpec("passt_tiny", str(other)),),
                      tracking_uri=tracking_uri)
    with pytest.raises(Exception, match="checkpoint"):
        run_teach(cfg)


def _done_chunks(store_path):
    try:
        return int(LogitStore.open(str(store_path)).done_chunks("passt_tiny").sum())
    except Exception:  # noqa: BLE001 (another process is writing the store: unreadable counts as nothing done)
        return 0


def test_killed_teach_resumes_without_losing_or_recomputing_chunks(demo_asc, tmp_path):
    store = tmp_path / "s.zarr"
    cmd = CLI + ["teach", "--dataset", demo_asc["spec"], "--teacher", "passt_tiny", "--store", str(store),
                 "--chunk-size", "4", "--batch-size", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while _done_chunks(store) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its dask workers, mid-run
    proc.wait()
    before = LogitStore.open(str(store))
    finished = before.done_chunks("passt_tiny").copy()
    assert 2 <= finished.sum() < before.num_chunks
    kept = before.read([i for c in np.flatnonzero(finished) for i in before.chunk_ids(int(c))], teachers=["passt_tiny"])
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    after = LogitStore.open(str(store))
    assert after.done_chunks("passt_tiny").all() and after.verify() == []
    again = after.read([i for c in np.flatnonzero(finished) for i in after.chunk_ids(int(c))], teachers=["passt_tiny"])
    np.testing.assert_array_equal(kept, again)
    assert f"{int(finished.sum())} already done" in result.stdout


def test_bad_teacher_options_are_one_line_errors(demo_asc, tmp_path):
    result = subprocess.run(CLI + ["teach", "--dataset", demo_asc["spec"], "--teacher", "passt_tiny=missing.pt",
                                   "--store", str(tmp_path / "s.zarr")], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(KdError, match="unique"):
        TeachConfig(dataset="x:y", store="s", teachers=(TeacherSpec("a"), TeacherSpec("a")))
