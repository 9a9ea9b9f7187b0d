"""kd distill end to end: teach -> distill -> MLflow, exact resume, refusal of stores that do not fit."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupt import Killed, kill_after_epoch

from kd.core.checkpoints import TeacherSpec
from kd.deploy.predict import evaluate_checkpoint, predict_files
from kd.evaluate.loop import predict
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd.train.distill import DistillConfig, TeacherChoice, distill, prepare_distillation
from kd.train.job import evaluate_best
from kd.train.loaders import make_dataset, make_loader
from kd.train.report import probe_logits
from kd_errors import KdError
from layers import read_checkpoint

pytestmark = pytest.mark.slow
ASC_STUDENT = "cp_mobile_tiny"


def _teach(spec, store, tracking_uri, teachers, **kw):
    cfg = TeachConfig(dataset=spec, store=str(store), teachers=tuple(TeacherSpec.parse(t) for t in teachers),
                      chunk_size=16, tracking_uri=tracking_uri, **kw)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return run_teach(cfg)


@pytest.fixture(scope="module")
def asc_store(demo_asc, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "asc.zarr"
    uri = f"sqlite:///{path.parent / 'mlflow.db'}"
    _teach(demo_asc["spec"], path, uri, ("passt_tiny", "ast_tiny"))
    return str(path)


def _cfg(demo, store, out, tracking_uri, teachers="passt_tiny,ast_tiny:0.6,0.4", **kw):
    return DistillConfig(dataset=demo["spec"], student=kw.pop("student", ASC_STUDENT), out=str(out), store=store,
                         teachers=TeacherChoice.parse(teachers), epochs=kw.pop("epochs", 2), batch_size=8,
                         device="cpu", tracking_uri=tracking_uri, **kw)


def test_teacher_choice_parsing():
    assert TeacherChoice.parse("none").names == ()
    choice = TeacherChoice.parse("a,b:0.7,0.3")
    assert choice.names == ("a", "b") and choice.weights == (0.7, 0.3) and str(choice) == "a,b:0.7,0.3"
    with pytest.raises(KdError, match="2 teachers but 1 weights"):
        TeacherChoice.parse("a,b:1")


def test_asc_distillation_tracks_params_metrics_and_checkpoint(demo_asc, asc_store, tmp_path, tracking_uri):
    import mlflow

    result = distill(_cfg(demo_asc, asc_store, tmp_path / "run", tracking_uri, roll_seconds=0.1, gain_db=3.0,
                          mixstyle_p=0.5))
    assert len(result.history) == 2 and 0.0 <= result.best <= 1.0
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["teachers"] == "passt_tiny,ast_tiny:0.6,0.4"
    assert run.data.params["kd_lambda"] == "0.02" and run.data.params["temperature"] == "2.0"
    assert run.data.tags["store"] == asc_store and run.data.tags["store_fingerprint"]  # bookkeeping: tags
    assert {"accuracy", "acc_seen", "acc_unseen", "params", "macs"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2]
    assert any(a.path == "checkpoint" for a in client.list_artifacts(run.info.run_id))
    metrics = evaluate_checkpoint(result.checkpoint, demo_asc["spec"], device="cpu")
    assert metrics["accuracy"] == pytest.approx(result.best)
    top = predict_files(result.checkpoint, [open_first_clip(demo_asc)], device="cpu")[0].top
    assert len(top) == 3 and top[0][1] >= top[1][1]


def open_first_clip(demo):
    from kd.data import open_dataset

    return open_dataset(demo["spec"], split="eval").clips[0].source


def test_killed_run_resumes_to_the_same_result(demo_asc, asc_store, tmp_path, tracking_uri):
    full = distill(_cfg(demo_asc, asc_store, tmp_path / "full", tracking_uri, epochs=3))

    with pytest.raises(Killed):
        distill(_cfg(demo_asc, asc_store, tmp_path / "resumed", tracking_uri, epochs=3), on_epoch=kill_after_epoch(1))
    resumed = distill(_cfg(demo_asc, asc_store, tmp_path / "resumed", tracking_uri, epochs=3, resume=True))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    a = read_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_only_baseline_needs_no_store(demo_asc, tmp_path, tracking_uri):
    result = distill(_cfg(demo_asc, None, tmp_path / "base", tracking_uri, teachers="none", epochs=1))
    assert result.history[0]["train_loss"] == result.history[0]["train_hard_loss"]
    # without a store to say how long the clips are, the dataset's 1 s clips are used, never padded to 10 s
    assert read_checkpoint(result.checkpoint)["meta"]["seconds"] == pytest.approx(1.0)


def test_store_missing_clips_is_refused_or_dropped(demo_asc, tmp_path, tracking_uri):
    from kd.data import open_dataset

    data_dir = tmp_path / "asc"
    shutil.copytree(demo_asc["path"], data_dir)
    store = tmp_path / "partial.zarr"
    victim = open_dataset(f"tau22:{data_dir}").clips[5]
    victim_source = victim.source
    original = Path(victim_source).read_bytes()
    Path(victim_source).write_bytes(b"broken")
    _teach(f"tau22:{data_dir}", store, tracking_uri, ("passt_tiny",))
    Path(victim_source).write_bytes(original)  # the clip is readable now, but has no logits
    demo = {"spec": f"tau22:{data_dir}"}
    with pytest.raises(KdError, match=rf"1 of \d+ training clips \(train split and transfer sets\) have no logits .*"
                                      rf"1 undecodable \(e.g. {victim.id}: unreadable.*fix or remove them.*"
                                      r"--missing drop"):
        distill(_cfg(demo, str(store), tmp_path / "r", tracking_uri, teachers="passt_tiny", epochs=1))
    result = distill(_cfg(demo, str(store), tmp_path / "r", tracking_uri, teachers="passt_tiny", epochs=1,
                          missing="drop"))
    import mlflow

    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    train_clips = len(open_dataset(f"tau22:{data_dir}", split="train"))
    assert run.tags["dropped_clips"] == "1" and run.params["train_clips"] == str(train_clips - 1)


def test_store_of_other_classes_or_unknown_teacher_is_refused(demo_asc, demo_tagging, asc_store, tmp_path,
                                                                tracking_uri):
    from logit_store import VocabularyMismatch

    with pytest.raises(VocabularyMismatch, match="class"):
        distill(_cfg(demo_tagging, asc_store, tmp_path / "r", tracking_uri, student="mn01", epochs=1))
    with pytest.raises(KdError, match="no teacher nope"):
        distill(_cfg(demo_asc, asc_store, tmp_path / "r", tracking_uri, teachers="nope", epochs=1))


def test_logit_matching_refuses_a_topk_store_in_one_line(tmp_path):
    """A store keeping the 20 largest of 527 logits per view cannot give the logits a --soft-loss logits run matches;
    a q8 store can."""
    from kd.train.distill import check_every_logit_kept
    from logit_store import LogitStore

    ids, classes = [f"c{i}" for i in range(8)], [f"k{i}" for i in range(527)]
    store = LogitStore.create(str(tmp_path / "s.zarr"), ids, classes, dataset="demo", dataset_fingerprint="fp",
                              chunk_size=8, views={"count": 2}, view_param_names=["gain_db"])
    store.add_teacher("sparse", codec={"name": "topk", "k": 20})
    store.add_teacher("dense", codec="q8")
    infos = {name: store.teacher_info(name) for name in ("dense", "sparse")}
    check_every_logit_kept("s.zarr", {"dense": infos["dense"]})
    with pytest.raises(KdError, match=r"keeps only the 20 largest of teacher sparse's 527 per view") as refusal:
        check_every_logit_kept("s.zarr", infos)
    assert "\n" not in str(refusal.value)


def test_sed_distillation_aligns_frame_targets(demo_sed, tmp_path, tracking_uri):
    store = tmp_path / "sed.zarr"
    _teach(demo_sed["spec"], store, tracking_uri, ("passt_tiny_frame",))
    result = distill(DistillConfig(dataset=demo_sed["spec"], student="fmn_tiny", out=str(tmp_path / "sed"),
                                   store=str(store), teachers=TeacherChoice.parse("passt_tiny_frame"), epochs=1,
                                   batch_size=8, device="cpu", tracking_uri=tracking_uri))
    assert {"frame_mAP", "psds1", "psds2"} <= set(result.history[0])
    events = predict_files(result.checkpoint, [open_first_clip(demo_sed)], threshold=0.0, device="cpu")[0].events
    assert events and all(on < off for on, off, _ in events)
    assert np.isfinite(result.history[0]["train_soft_loss"])


def test_trained_student_serves_as_teacher(demo_asc, tmp_path, tracking_uri):
    from kd.core.checkpoints import build_teacher, load_student
    from kd.data import open_dataset
    from logit_store import LogitStore

    checkpoint = distill(_cfg(demo_asc, None, tmp_path / "cnn", tracking_uri, teachers="none", epochs=1)).checkpoint
    store, teacher = str(tmp_path / "cnn.zarr"), TeacherSpec.parse(f"cnn:{ASC_STUDENT}={checkpoint}")
    run_teach(TeachConfig(dataset=demo_asc["spec"], store=store, teachers=(teacher,), chunk_size=16, codec="f32",
                          tracking_uri=tracking_uri))
    model, meta = load_student(checkpoint)
    data = open_dataset(demo_asc["spec"], split="train")
    clip = data.clips[3]
    wave = data.load_audio(clip, model.sample_rate, meta["seconds"])
    with torch.inference_mode():
        expected = model(torch.from_numpy(wave)[None]).numpy()
    np.testing.assert_allclose(LogitStore.open(store).read([clip.id], teachers=["cnn"]), expected, atol=1e-4)
    with pytest.raises(KdError, match=f"holds a {ASC_STUDENT} student, not cp_mobile"):
        build_teacher(TeacherSpec("cp_mobile", checkpoint))
    with pytest.raises(KdError, match="unknown teacher 'cp_mobile'.*cp_mobile=CHECKPOINT"):
        build_teacher(TeacherSpec("cp_mobile"))


@pytest.mark.slow
def test_an_averaged_student_is_the_checkpoint_handed_on(demo_asc, tmp_path, tracking_uri):
    """--average-last 2: the run hands on averaged.pt (scored, logged), which evaluates like any student."""
    result = distill(DistillConfig(dataset=demo_asc["spec"], student="cp_mobile_tiny", out=str(tmp_path / "avg"),
                                   teachers=TeacherChoice.parse("none"), epochs=2, average_last=2, batch_size=8,
                                   device="cpu", tracking_uri=tracking_uri))
    assert result.checkpoint == str(tmp_path / "avg" / "averaged.pt")
    averaged = read_checkpoint(result.checkpoint)["averaged_metrics"]
    assert evaluate_checkpoint(result.checkpoint, demo_asc["spec"], device="cpu")["accuracy"] == pytest.approx(
        averaged["accuracy"])


def test_the_handed_on_checkpoint_reuses_the_last_evaluation_only_for_the_same_weights(demo_asc, tmp_path,
                                                                                        tracking_uri, monkeypatch):
    job = prepare_distillation(_cfg(demo_asc, None, tmp_path / "job", tracking_uri, teachers="none", eval_every=2))
    job.trainer.fit(job.train_loader, job.step, job.evaluate)  # 2 epochs, evaluated after the second
    calls = []
    monkeypatch.setattr("kd.train.job.predict", lambda *args: calls.append(args) or predict(*args))
    last = tmp_path / "job" / "last.pt"
    reused = evaluate_best(job, last)
    assert not calls
    job.last_evaluation = None
    np.testing.assert_array_equal(evaluate_best(job, last).logits, reused.logits)
    assert len(calls) == 1
    # the report's agreement with the teachers reads the logits of eval clips off the evaluation
    eval_set = job.eval_loader.dataset
    probe = make_dataset(eval_set.data, eval_set.clips[1::3], job.model, eval_set.seconds)
    logits, order = probe_logits(probe, reused)
    assert order.tolist() == list(range(len(probe.clips)))
    np.testing.assert_allclose(logits, predict(job.model, make_loader(probe, 8, train=False), job.device)[0],
                               rtol=1e-5, atol=1e-6)

    other = read_checkpoint(last)
    other["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["model"].items()}
    torch.save(other, tmp_path / "other.pt")
    job.evaluate(job.model)  # the last evaluation is again of last.pt's weights
    assert not np.array_equal(evaluate_best(job, tmp_path / "other.pt").logits, reused.logits)
    assert len(calls) == 3
