"""The parts of kd teach that need no cluster: the clip-length policy, batching by length, the worker plan,
precision, failure kinds, and a chunk taught in this process with decoding and forward overlapped."""
import numpy as np
import pytest
import soundfile as sf
import torch

from kd.data import ClipLengths, DatasetError, open_dataset
from kd.teach import chunk_resources, failure_kind, length_batches, plan_workers, resolve_precision
from kd_errors import KdError

SR = 16000


def _wav(path, seconds, seed=0, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(max(1, int(seconds * sr)))).astype(np.float32), sr)
    return path


def _manifest(tmp_path, lengths, durations=None):
    rows = ["path,label" + (",duration" if durations else "")]
    for i, seconds in enumerate(lengths):
        _wav(tmp_path / f"c{i:03d}.wav", seconds, seed=i)
        rows.append(f"c{i:03d}.wav,{'ab'[i % 2]}" + (f",{durations[i]}" if durations else ""))
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return open_dataset(f"manifest:{tmp_path / 'm.csv'}")


def test_one_truncated_first_file_does_not_decide_the_length(tmp_path):
    data = _manifest(tmp_path, [1.0] * 12)
    (tmp_path / "c000.wav").write_bytes((tmp_path / "c000.wav").read_bytes()[:100])  # still decodes, to ~28 samples
    lengths = data.clip_lengths()
    assert lengths.seconds == 1.0 and lengths.chosen_by == "p90" and lengths.source.startswith("decoded sample of 12")
    assert lengths.min < 0.01 and lengths.median == 1.0 and not lengths.variable
    assert lengths.min_seconds == 0.5  # the truncated clip is under it: flagged, never padded to 1 s
    assert "1 s (the 90th percentile" in lengths.describe()


def test_variable_lengths_get_the_90th_percentile_and_a_minimum_below_the_short_ones(tmp_path):
    seconds = np.linspace(0.3, 2.3, 21).round(2).tolist()
    data = _manifest(tmp_path, seconds)
    lengths = data.clip_lengths()
    assert lengths.seconds == pytest.approx(np.percentile(seconds, 90), abs=1e-3)
    assert lengths.variable and lengths.count == 21
    assert lengths.min_seconds < min(seconds)  # every genuine clip of the dataset passes
    assert data.clip_seconds() == lengths.seconds


def test_metadata_comes_first_and_seconds_overrides(tmp_path):
    data = _manifest(tmp_path, [1.0, 1.0, 1.0], durations=[10, 10, 4])
    lengths = data.clip_lengths()
    assert lengths.source == "metadata" and lengths.seconds == pytest.approx(np.percentile([10, 10, 4], 90))
    given = data.clip_lengths(seconds=2.5)
    assert given.seconds == 2.5 and given.chosen_by == "--seconds" and given.median == 10
    assert given.min_seconds == 1.25  # half of the given length when the dataset's short end is longer


def test_no_decodable_clip_asks_for_seconds(tmp_path):
    data = _manifest(tmp_path, [1.0, 1.0])
    for f in ("c000.wav", "c001.wav"):
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(DatasetError, match="pass --seconds"):
        data.clip_lengths()
    lengths = data.clip_lengths(seconds=3.0)
    assert lengths.seconds == 3.0 and lengths.p10 is None and lengths.unusable == 2
    assert ClipLengths(**{k: v for k, v in lengths.as_dict().items() if k in ClipLengths.__dataclass_fields__}) == lengths


def test_too_short_clips_are_refused_by_the_decoder(tmp_path):
    from kd.data import AudioError, load_audio

    path = _wav(tmp_path / "a.wav", 0.2)
    with pytest.raises(AudioError, match="too short: 0.2 s"):
        load_audio(str(path), SR, 1.0, min_seconds=0.5)
    assert len(load_audio(str(path), SR, 1.0, pad=False)) == int(0.2 * SR)
    assert len(load_audio(str(path), SR, 0.1, pad=False)) == int(0.1 * SR)
    assert len(load_audio(str(path), SR, 1.0)) == SR


@pytest.mark.parametrize("seed", range(5))
def test_length_batches_pad_no_clip_by_more_than_the_tolerance(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4800, 36800, size=int(rng.integers(1, 300))).tolist()
    batches = length_batches(lengths, batch_size=16, tolerance=0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= 16
        assert max(lengths[i] for i in batch) <= 1.1 * min(lengths[i] for i in batch)
    equal = length_batches([100] * 40, batch_size=16)
    assert [len(b) for b in equal] == [16, 16, 8]


def test_worker_plan_one_worker_per_visible_gpu():
    plan = plan_workers("auto", None, ["0", "1", "2", "3"], cores=16)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in plan] == ["0", "1", "2", "3"]
    assert {w.device for w in plan} == {"cuda"} and all(w.resources == {"GPU": 1.0} for w in plan)
    assert {w.env["OMP_NUM_THREADS"] for w in plan} == {"4"}
    visible = plan_workers("cuda", None, ["GPU-aa", "GPU-bb"], cores=8)  # CUDA_VISIBLE_DEVICES as UUIDs
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in visible] == ["GPU-aa", "GPU-bb"]
    one = plan_workers("cuda:1", None, ["4", "5"], cores=8)
    assert [(w.env["CUDA_VISIBLE_DEVICES"], w.device) for w in one] == [("5", "cuda")]
    shared = plan_workers("auto", 4, ["0", "1"], cores=8)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in shared] == ["0", "1", "0", "1"]


def test_worker_plan_without_gpus():
    plan = plan_workers("auto", None, [], cores=2)
    assert len(plan) == 1 and plan[0].device == "cpu" and plan[0].resources == {}
    assert "CUDA_VISIBLE_DEVICES" not in plan[0].env
    cpu = plan_workers("cpu", 2, ["0"], cores=2)
    assert [w.device for w in cpu] == ["cpu", "cpu"] and {w.env["OMP_NUM_THREADS"] for w in cpu} == {"1"}
    with pytest.raises(KdError, match="no CUDA device"):
        plan_workers("cuda", None, [], cores=2)
    with pytest.raises(KdError, match="cuda:0..cuda:1"):
        plan_workers("cuda:2", None, ["0", "1"], cores=2)


def test_chunks_ask_for_a_share_of_a_gpu_only_where_workers_declare_gpus():
    gpu, cpu = {"resources": {"GPU": 1.0}}, {"resources": {}}
    assert chunk_resources({"workers": {"a": gpu, "b": cpu}}) == {"GPU": 0.5}
    assert chunk_resources({"workers": {"a": cpu, "b": {}}}) is None
    assert chunk_resources({}) is None


def test_precision_defaults_to_fp32_on_cpu_and_keeps_an_explicit_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"


def test_failure_kinds():
    assert failure_kind("too short: 0.001 s of audio, under the 0.5 s minimum") == "too short"
    assert failure_kind("silent (all zeros) in the first 1 s") == "silent"
    assert failure_kind("teacher passt failed: RuntimeError: boom") == "teacher error"
    assert failure_kind("teacher passt returned non-finite logits") == "teacher error"
    assert failure_kind("empty file (0 bytes)") == "undecodable"
    assert failure_kind("decode error: ValueError: bad") == "undecodable"


# --- chunks taught in this process (a threaded dask cluster, so the test can wrap a teacher) ---------------------
@pytest.fixture(scope="module")
def scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _teach_here(spec, store, scheduler, tracking_uri, **kw):
    from kd.checkpoints import TeacherSpec
    from kd.teach import TeachConfig, run_teach

    cfg = TeachConfig(dataset=spec, store=str(store), teachers=(TeacherSpec("passt_tiny"),), device="cpu",
                      scheduler=scheduler, tracking_uri=tracking_uri, codec=kw.pop("codec", "f32"),
                      chunk_size=kw.pop("chunk_size", 8), batch_size=kw.pop("batch_size", 4), **kw)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return run_teach(cfg)


def _wrap_teacher(monkeypatch, should_raise, change=None):
    """Every teacher kd.teach builds raises what ``should_raise(batch)`` returns (None: runs normally); its
    outputs pass through ``change(batch, output)`` if given."""
    import kd.teach

    original = kd.teach.build_teacher

    def build(spec, num_classes=None, **kw):
        model = original(spec, num_classes, **kw)
        forward = model.forward

        def guarded(wave):
            error = should_raise(wave)
            if error is not None:
                raise error
            return change(wave, forward(wave)) if change else forward(wave)

        model.forward = guarded
        return model

    monkeypatch.setattr(kd.teach, "build_teacher", build)


@pytest.fixture
def asc_copy(demo_asc, tmp_path):
    import shutil

    shutil.copytree(demo_asc["path"], tmp_path / "asc")
    data = open_dataset(f"tau22:{tmp_path / 'asc'}")
    return f"tau22:{tmp_path / 'asc'}", data


def _dc_offset(wave):  # the victim below is a constant 0.5: no other demo clip has a mean near it
    return RuntimeError("boom on a DC clip") if bool((wave.mean(dim=-1) > 0.25).any()) else None


@pytest.mark.slow
def test_a_teacher_raising_on_one_clip_loses_only_that_clip(asc_copy, tmp_path, scheduler, tracking_uri, monkeypatch):
    from logit_store import LogitStore

    spec, data = asc_copy
    clean = _teach_here(spec, tmp_path / "clean.zarr", scheduler, tracking_uri)
    assert clean.failures == {}
    victim = data.clips[5]  # in the middle of a batch of 4
    sf.write(victim.source, np.full(44100, 0.5, np.float32), 44100)
    _wrap_teacher(monkeypatch, _dc_offset)
    summary = _teach_here(spec, tmp_path / "s.zarr", scheduler, tracking_uri)
    assert list(summary.failures) == [victim.id]
    assert summary.failures[victim.id] == "teacher passt_tiny failed: RuntimeError: boom on a DC clip"
    assert summary.failure_kinds == {"teacher error": 1} and summary.written == {"passt_tiny": len(data) - 1}
    store, reference = LogitStore.open(str(tmp_path / "s.zarr")), LogitStore.open(str(tmp_path / "clean.zarr"))
    others = [c.id for c in data.clips if c.id != victim.id]
    np.testing.assert_allclose(store.read(others, teachers=["passt_tiny"]),
                               reference.read(others, teachers=["passt_tiny"]), atol=1e-5)
    assert store.verify() == []


@pytest.mark.slow
@pytest.mark.parametrize("error", [TypeError("a bug on one clip"), RuntimeError("a teacher broken on every clip")])
def test_bugs_and_broken_teachers_still_end_the_job(asc_copy, tmp_path, scheduler, tracking_uri, monkeypatch, error):
    spec, data = asc_copy
    if isinstance(error, TypeError):
        sf.write(data.clips[5].source, np.full(44100, 0.5, np.float32), 44100)
        _wrap_teacher(monkeypatch, lambda wave: error if _dc_offset(wave) else None)
    else:
        _wrap_teacher(monkeypatch, lambda wave: error)
    with pytest.raises(type(error), match=str(error)):
        _teach_here(spec, tmp_path / "s.zarr", scheduler, tracking_uri)


@pytest.mark.slow
def test_a_variable_length_dataset_is_taught_at_its_own_lengths(tmp_path, scheduler, tracking_uri):
    from kd.checkpoints import TeacherSpec, build_teacher
    from logit_store import LogitStore

    seconds = np.linspace(0.4, 2.0, 17).round(2).tolist()
    data = _manifest(tmp_path / "var", seconds)
    chosen = round(float(np.percentile(seconds, 90)), 3)
    summary = _teach_here(data.spec, tmp_path / "s.zarr", scheduler, tracking_uri, batch_size=1)
    assert summary.clip_lengths["seconds"] == chosen and summary.clip_lengths["variable"]
    assert summary.fed_as.startswith("each clip at its own length") and summary.failures == {}
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert store.teacher_info("passt_tiny")["clip_seconds"] == chosen
    assert store.user_attrs["clip_lengths"]["seconds"] == chosen and store.user_attrs["clip_lengths"]["too_short"] == 0
    with pytest.warns(UserWarning, match="RANDOM weights"):
        teacher = build_teacher(TeacherSpec("passt_tiny"), len(data.classes)).eval()
    for clip in (data.clips[0], data.clips[-1]):  # 0.4 s fed whole, 2.0 s cropped to the chosen length
        audio = data.load_audio(clip, teacher.sample_rate, chosen, pad=False)
        assert len(audio) == round(min(clip_seconds(clip, data), chosen) * teacher.sample_rate)
        with torch.inference_mode():
            expected = teacher(torch.from_numpy(audio)[None]).clip.numpy()
        np.testing.assert_allclose(store.read([clip.id], teachers=["passt_tiny"]), expected, atol=1e-5)
    batched = _teach_here(data.spec, tmp_path / "b.zarr", scheduler, tracking_uri, batch_size=8)
    assert batched.written == {"passt_tiny": len(seconds)}


def clip_seconds(clip, data):
    audio, rate = sf.read(clip.source)
    return len(audio) / rate


@pytest.mark.slow
def test_bf16_runs_on_the_cpu_close_to_fp32(demo_asc, tmp_path, scheduler, tracking_uri):
    from logit_store import LogitStore

    fp32 = _teach_here(demo_asc["spec"], tmp_path / "fp32.zarr", scheduler, tracking_uri, precision="fp32")
    bf16 = _teach_here(demo_asc["spec"], tmp_path / "bf16.zarr", scheduler, tracking_uri, precision="bf16")
    assert fp32.devices == ["cpu fp32"] and bf16.devices == ["cpu bf16"]
    ids = LogitStore.open(str(tmp_path / "fp32.zarr")).clip_ids
    a = LogitStore.open(str(tmp_path / "fp32.zarr")).read(ids, teachers=["passt_tiny"])
    b = LogitStore.open(str(tmp_path / "bf16.zarr")).read(ids, teachers=["passt_tiny"])
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(a).max()


@pytest.mark.slow
def test_dashboard_without_bokeh_is_a_one_line_error_before_anything_is_written(demo_asc, tmp_path):
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("bokeh") is not None:
        pytest.skip("bokeh is installed: the dashboard would start")
    cli = [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py")]
    result = subprocess.run(cli + ["teach", "--dataset", demo_asc["spec"], "--teacher", "passt_tiny", "--store",
                                   str(tmp_path / "s.zarr"), "--dashboard"], check=False, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2 and "needs bokeh" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.slow
def test_logits_that_overflow_in_reduced_precision_are_computed_again_in_fp32(asc_copy, tmp_path, scheduler,
                                                                               tracking_uri, monkeypatch):
    from teachers import TeacherOutput

    spec, data = asc_copy
    overflow, broken = data.clips[5], data.clips[12]
    sf.write(overflow.source, np.full(44100, 0.5, np.float32), 44100)
    sf.write(broken.source, np.full(44100, -0.5, np.float32), 44100)

    def change(wave, out):  # inf for the first clip under autocast only, NaN for the second always
        mean = wave.mean(dim=-1, keepdim=True)
        clip = torch.where((mean > 0.25) & torch.is_autocast_enabled("cpu"), torch.inf, out.clip)
        return TeacherOutput(torch.where(mean < -0.25, torch.nan, clip), out.frame)

    _wrap_teacher(monkeypatch, lambda wave: None, change)
    summary = _teach_here(spec, tmp_path / "s.zarr", scheduler, tracking_uri, precision="bf16")
    assert summary.failures == {broken.id: "teacher passt_tiny returned non-finite logits"}
    from logit_store import LogitStore

    assert np.isfinite(LogitStore.open(str(tmp_path / "s.zarr")).read([overflow.id], teachers=["passt_tiny"])).all()


@pytest.mark.slow
def test_a_scheduler_whose_workers_declare_gpus_gets_chunks_asking_for_them(demo_asc, tmp_path, tracking_uri):
    """Workers started with ``--resources GPU=1`` (here on the CPU): each chunk asks for half a GPU, so a worker
    runs two at once, and the job completes instead of waiting for a resource nobody declared."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as cluster:
        summary = _teach_here(demo_asc["spec"], tmp_path / "s.zarr", cluster.scheduler_address, tracking_uri)
    assert summary.written == {"passt_tiny": summary.clips} and summary.chunks_run > 1
