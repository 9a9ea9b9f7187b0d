"""The parts of kd teach that need no cluster: the clip-length policy, batching by length, the worker plan,
precision, failure kinds; and jobs taught in this process (a threaded dask cluster): short clips, teacher errors,
failed shares, overflowing logits."""
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from kd.core.failures import failure_kind
from kd.data import ClipLengths, DatasetError, open_dataset
from kd.teach.pipeline import length_batches
from kd.teach.placement import chunk_resources, plan_workers, resolve_precision
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


CNN_SHORTEST = (16 * 750 + 1) / 32000  # CP-ResNet's pooling stack: 17 frames of hop 750 at 32 kHz


def test_clip_length_is_never_shorter_than_the_teachers_take(tmp_path):
    """Clips of 0.2-0.3 s and a CP-ResNet teacher (0.375 s): the length is raised to what it takes (clips are
    padded up to it, none is too short); --seconds below it is a one-line error, above it is kept."""
    from kd.core.checkpoints import TeacherSpec
    from kd.teach.config import TeachConfig
    from kd.teach.pipeline import teach_lengths

    data = _manifest(tmp_path, np.linspace(0.2, 0.3, 8).round(3).tolist())
    shortest = {"passt_tiny": 0.150, "cpr": CNN_SHORTEST}

    def cfg(seconds=None):
        return TeachConfig(dataset=data.spec, store="s", teachers=(TeacherSpec("cp_resnet"),), seconds=seconds)

    raised = teach_lengths(cfg(), data, shortest)
    assert raised.seconds == CNN_SHORTEST and raised.chosen_by == "shortest input"
    assert raised.min_seconds < 0.2 and "0.375 s (the teachers' shortest input" in raised.describe()
    assert teach_lengths(cfg(1.0), data, shortest).seconds == 1.0
    with pytest.raises(KdError, match=r"--seconds 0.25 is shorter than teacher cpr takes \(0.375 s.*--seconds 0.376"):
        teach_lengths(cfg(0.25), data, shortest)


def test_the_student_pads_as_the_teachers_did_and_never_below_what_it_takes(tmp_path):
    from kd.train.distill import DistillConfig, StoreJoin, student_seconds
    from students import create_student

    data = _manifest(tmp_path, np.linspace(0.2, 0.3, 8).round(3).tolist())
    student = create_student("cp_resnet", 2)

    def cfg(seconds=None):
        return DistillConfig(dataset=data.spec, out=str(tmp_path / "r"), student="cp_resnet", seconds=seconds)

    assert student_seconds(cfg(), None, data, student) == CNN_SHORTEST  # labels only: the dataset's 0.29 s, raised
    join = StoreJoin([], [], None, clip_seconds=0.8, provenance={}, pad_to_seconds=0.375)
    assert student_seconds(cfg(), join, data, student) == 0.8
    assert student_seconds(cfg(0.5), join, data, student) == 0.5
    with pytest.raises(KdError, match="--seconds 0.3 is shorter than cp_resnet takes"):
        student_seconds(cfg(0.3), join, data, student)


def test_distill_says_why_clips_have_no_logits_and_what_fixes_it(tmp_path):
    from kd.train.distill import why_missing
    from logit_store import LogitStore

    ids = [f"c{i}" for i in range(6)]
    store = LogitStore.create(str(tmp_path / "s.zarr"), ids, ["a", "b"], dataset="d", dataset_fingerprint="f",
                              chunk_size=6)
    failures = {"c1": "too short: 0.01 s of audio, under the 0.2 s minimum", "c2": "silent (all zeros)",
                "c3": "too short: 0.02 s of audio, under the 0.2 s minimum"}
    line = why_missing(store, ["c1", "c2", "c3", "x9"], failures)
    assert line.startswith("2 too short (e.g. c1: too short: 0.01 s of audio, under the 0.2 s minimum; under half")
    assert "1 silent (e.g. c2" in line and "1 not in the store (e.g. x9)" in line


def test_failure_kinds():
    assert failure_kind("too short: 0.001 s of audio, under the 0.5 s minimum") == "too short"
    assert failure_kind("silent (all zeros) in the first 1 s") == "silent"
    assert failure_kind("non-finite samples") == "non-finite audio"
    assert failure_kind("teacher passt returned non-finite logits") == "non-finite logits"
    assert failure_kind("teacher cpr failed: RuntimeError: Output size is too small") == "teacher error"  # older kd
    assert failure_kind("empty file (0 bytes)") == "undecodable"
    assert failure_kind("missing file /x.wav") == "undecodable"
    assert failure_kind("decode error: ValueError: bad") == "undecodable"


def test_failures_are_grouped_by_kind_with_an_example_and_a_fix():
    from kd.core.failures import describe_failures, group_failures

    failures = {"a": "silent (all zeros)", "b": "empty file (0 bytes)", "c": "silent (all zeros) in the first 1 s",
                "d": "too short: 0.01 s of audio, under the 0.2 s minimum"}
    groups = group_failures(failures)
    assert [(g.kind, g.count, g.example_id) for g in groups] == [("silent", 2, "a"), ("undecodable", 1, "b"),
                                                                  ("too short", 1, "d")]
    line = describe_failures(failures)
    assert line.startswith("2 silent (e.g. a: silent (all zeros); all zeros") and "fix or remove them" in line
    assert "\n" not in line and group_failures({}) == []


def _summary(clips, failures):
    from kd.teach.config import TeachSummary

    return TeachSummary(store="s.zarr", clips=clips, chunks_run=1, chunks_skipped=0, written={}, failures=failures,
                        wall_seconds=1.0, store_info={})


def test_a_failed_share_over_the_threshold_is_refused_in_one_line():
    from kd.teach.config import TeachConfig, TooManyFailedClips
    from kd.teach.run import check_failed_share

    few = _summary(100, {f"c{i}": "silent (all zeros)" for i in range(5)})
    check_failed_share(few, 0.05)  # 5 % is allowed
    many = _summary(900, {f"c{i}": "too short: 0.1 s of audio, under the 0.2 s minimum" for i in range(300)})
    with pytest.raises(TooManyFailedClips, match=r"300 of 900 clips \(33.3%\) have no logits, more than --max-failed "
                                                 r"0.05 allows: 300 too short \(e.g. c0: too short") as error:
        check_failed_share(many, 0.05)
    assert isinstance(error.value, KdError) and "--missing drop" in str(error.value)
    check_failed_share(many, 0.5)
    from kd.core.checkpoints import TeacherSpec

    with pytest.raises(KdError, match="--max-failed is a fraction"):
        TeachConfig(dataset="x", store="s", teachers=(TeacherSpec("passt_tiny"),), max_failed_fraction=5)


# --- chunks taught in this process (a threaded dask cluster, so the test can wrap a teacher) ---------------------
@pytest.fixture(scope="module")
def scheduler():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _teach_here(spec, store, scheduler, tracking_uri, **kw):
    from kd.core.checkpoints import TeacherSpec
    from kd.teach.config import TeachConfig
    from kd.teach.run import run_teach

    teachers = tuple(TeacherSpec.parse(t) for t in kw.pop("teachers", ("passt_tiny",)))
    cfg = TeachConfig(dataset=spec, store=str(store), teachers=teachers, device="cpu",
                      scheduler=scheduler, tracking_uri=tracking_uri, codec=kw.pop("codec", "f32"),
                      chunk_size=kw.pop("chunk_size", 8), batch_size=kw.pop("batch_size", 4), **kw)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return run_teach(cfg)


def _wrap_teacher(monkeypatch, should_raise, change=None):
    """Every teacher kd teach builds (the run's, which measure the shortest inputs, and the workers') raises what
    ``should_raise(batch)`` returns (None: runs normally); its outputs pass through ``change(batch, output)`` if
    given."""
    import kd.teach.pipeline
    import kd.teach.run

    original = kd.teach.pipeline.build_teacher

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

    for module in (kd.teach.run, kd.teach.pipeline):
        monkeypatch.setattr(module, "build_teacher", build)


@pytest.fixture
def asc_copy(demo_asc, tmp_path):
    import shutil

    shutil.copytree(demo_asc["path"], tmp_path / "asc")
    data = open_dataset(f"tau22:{tmp_path / 'asc'}")
    return f"tau22:{tmp_path / 'asc'}", data


def _dc_offset(wave):  # the victim below is a constant 0.5: no other demo clip has a mean near it
    return RuntimeError("boom on a DC clip") if bool((wave.mean(dim=-1) > 0.25).any()) else None


@pytest.mark.slow
def test_a_model_raising_a_size_error_on_a_valid_clip_ends_the_job(asc_copy, tmp_path, scheduler, tracking_uri,
                                                                   monkeypatch):
    """The clip decoded fine, so the error is never its own: the job stops with it (recording it per clip once
    dropped a third of a dataset of short clips while the job reported success)."""
    from kd.teach.config import TeacherFailed
    from logit_store import LogitStore

    spec, data = asc_copy
    sf.write(data.clips[5].source, np.full(44100, 0.5, np.float32), 44100)
    size_error = RuntimeError("Given input size: (32x31x1). Calculated output size: (32x15x0). Output size is too small")
    _wrap_teacher(monkeypatch, lambda wave: size_error if _dc_offset(wave) else None)
    with pytest.raises(TeacherFailed, match=r"teacher passt_tiny raised RuntimeError on a batch of 4 clips that "
                                            r"decoded fine .*Output size is too small") as raised:
        _teach_here(spec, tmp_path / "s.zarr", scheduler, tracking_uri)
    assert isinstance(raised.value.__cause__, RuntimeError)  # the model's own error, with its traceback
    assert LogitStore.open(str(tmp_path / "s.zarr")).failures("passt_tiny") == {}  # nothing blamed on the clip


@pytest.mark.slow
def test_a_bug_on_one_clip_ends_the_job_and_a_teacher_broken_on_every_input_never_starts(asc_copy, tmp_path, scheduler,
                                                                                        tracking_uri, monkeypatch):
    from kd.teach.config import TeacherFailed

    spec, data = asc_copy
    sf.write(data.clips[5].source, np.full(44100, 0.5, np.float32), 44100)
    bug = TypeError("a bug on one clip")
    _wrap_teacher(monkeypatch, lambda wave: bug if _dc_offset(wave) else None)
    with pytest.raises(TeacherFailed, match=str(bug)) as raised:
        _teach_here(spec, tmp_path / "s.zarr", scheduler, tracking_uri)
    assert type(raised.value.__cause__) is TypeError
    broken = RuntimeError("a teacher broken on every input")
    _wrap_teacher(monkeypatch, lambda wave: broken)
    with pytest.raises(RuntimeError, match=str(broken)) as raised:  # measuring its shortest input finds none
        _teach_here(spec, tmp_path / "b.zarr", scheduler, tracking_uri)
    assert "broken, not picky" in raised.value.__notes__[0]


def _short_clips(folder):
    """16 noise clips of 0.2-0.9 s (a public set of short spoken clips is 0.29-0.86 s), every 4th in eval."""
    rows = ["path,label,split"]
    for i, seconds in enumerate(np.linspace(0.2, 0.9, 16).round(3)):
        _wav(folder / f"s{i:02d}.wav", seconds, seed=i)
        rows.append(f"s{i:02d}.wav,{'ab'[i % 2]},{'eval' if i % 4 == 3 else 'train'}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return f"manifest:{folder / 'm.csv'}"


def _cnn_teacher(path, classes):
    """A CP-ResNet as ``kd distill`` saves it (here with fresh weights), used as a teacher."""
    from students import create_student

    torch.manual_seed(0)
    meta = {"kind": "student", "name": "cp_resnet", "classes": list(classes), "seconds": 1.0}
    torch.save({"model": create_student("cp_resnet", len(classes)).state_dict(), "meta": meta}, path)
    return f"cpr:cp_resnet={path}"


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [None, 1.0])
def test_short_clips_are_taught_by_cnn_and_transformer_teachers_and_distilled(tmp_path, scheduler, tracking_uri,
                                                                             seconds):
    """Clips shorter than CP-ResNet's receptive field are padded to what it takes (at their own lengths) or to
    --seconds, never recorded as failures; kd distill then trains on every one of them."""
    import mlflow

    from kd.core.checkpoints import TeacherSpec, build_teacher
    from kd.train.distill import DistillConfig, TeacherChoice, distill
    from logit_store import LogitStore

    spec = _short_clips(tmp_path / "short")
    data = open_dataset(spec, split="train")
    cnn = _cnn_teacher(tmp_path / "cpr.pt", data.classes)
    summary = _teach_here(spec, tmp_path / "s.zarr", scheduler, tracking_uri, teachers=(cnn, "passt_tiny"),
                          split="train", seconds=seconds, batch_size=1 if seconds is None else 4)
    assert summary.failures == {} and summary.written == {"cpr": 12, "passt_tiny": 12}
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    lengths = store.user_attrs["clip_lengths"]
    assert lengths["pad_to_seconds"] == CNN_SHORTEST and lengths["too_short"] == 0
    if seconds is None:
        assert summary.fed_as.startswith("each clip at its own length") and "at least 0.375 s" in summary.fed_as
    else:
        assert summary.fed_as == "every clip cropped or padded to 1 s"
        assert store.teacher_info("cpr")["clip_seconds"] == 1.0
    shortest = data.clips[0]  # 0.2 s: fed padded to 0.375 s at its own length, or to the whole second
    audio = data.load_audio(shortest, 32000, seconds)
    audio = np.pad(audio, (0, max(0, 12001 - len(audio))))
    assert len(audio) == (12001 if seconds is None else 32000)
    for name, teacher in (("cpr", cnn), ("passt_tiny", "passt_tiny")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # passt_tiny's random weights
            model = build_teacher(TeacherSpec.parse(teacher), len(data.classes))
        with torch.inference_mode():
            expected = model(torch.from_numpy(audio)[None]).clip.numpy()
        np.testing.assert_allclose(store.read([shortest.id], teachers=[name]), expected, atol=1e-4)

    result = distill(DistillConfig(dataset=spec, student="cp_resnet", out=str(tmp_path / "run"),
                                   store=str(tmp_path / "s.zarr"), teachers=TeacherChoice.parse("cpr,passt_tiny"),
                                   epochs=1, batch_size=4, device="cpu", tracking_uri=tracking_uri, log_model=False))
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    assert run.params["train_clips"] == "12" and run.tags["dropped_clips"] == "0"
    assert np.isfinite(result.history[-1]["train_soft_loss"])


@pytest.mark.slow
def test_a_run_where_most_clips_fail_exits_non_zero_with_the_failures_grouped(tmp_path, scheduler, tracking_uri):
    from click.testing import CliRunner

    from cli import main
    from logit_store import LogitStore

    data = _manifest(tmp_path / "m", [0.5] * 10)
    for i in range(6):
        sf.write(tmp_path / "m" / f"c{i:03d}.wav", np.zeros(8000, np.float32), SR)
    (tmp_path / "m" / "c006.wav").write_bytes(b"RIFF not really a wave file")
    args = ["teach", "--dataset", data.spec, "--teacher", "passt_tiny", "--store", str(tmp_path / "s.zarr"),
            "--scheduler", scheduler, "--device", "cpu", "--tracking-uri", tracking_uri, "--chunk-size", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "clips without logits, by reason" in result.output
    assert "7 of 10 clips (70.0%) have no logits, more than --max-failed 0.05 allows: 6 silent (e.g. c000" in result.stderr
    assert "1 undecodable (e.g. c006" in result.stderr and "Traceback" not in result.stderr
    store = LogitStore.open(str(tmp_path / "s.zarr"))  # what was taught is kept
    assert store.verify() == [] and len(store.failures("passt_tiny")) == 7
    lenient = CliRunner().invoke(main, [*args, "--max-failed", "0.8"])
    assert lenient.exit_code == 0, lenient.output


@pytest.mark.slow
def test_a_variable_length_dataset_is_taught_at_its_own_lengths(tmp_path, scheduler, tracking_uri):
    from kd.core.checkpoints import TeacherSpec, build_teacher
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
    cli = [sys.executable, str(Path(__file__).resolve().parents[2] / "cli.py")]
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
