"""kd train-teacher: a frame-wise teacher trained on strong labels is taken by kd teach as it was saved."""
import pytest
import torch

from kd.core.checkpoints import TeacherSpec, build_teacher
from kd.train.teacher import TrainTeacherConfig, train_teacher
from kd_errors import KdError
from layers import read_checkpoint

pytestmark = pytest.mark.slow


def test_frame_wise_teacher_trains_on_strong_labels_and_reloads(demo_sed, tmp_path, tracking_uri):
    import mlflow

    result = train_teacher(TrainTeacherConfig(
        dataset=demo_sed["spec"], teacher="passt_tiny_frame", out=str(tmp_path / "t"), epochs=1, batch_size=8,
        lr=1e-3, device="cpu", tracking_uri=tracking_uri))
    assert {"frame_mAP", "psds1", "psds2"} <= set(result.history[0])
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.params["teacher"] == "passt_tiny_frame" and "frame_mAP" in run.data.metrics
    teacher = build_teacher(TeacherSpec("passt_tiny_frame", result.checkpoint), num_classes=len(demo_sed["classes"]))
    saved = read_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(saved[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(KdError, match="holds a passt_tiny_frame teacher"):
        build_teacher(TeacherSpec("passt_tiny", result.checkpoint))


def test_clip_teacher_cannot_learn_strong_labels(demo_sed, tmp_path):
    with pytest.raises(KdError, match="frame-wise"):
        train_teacher(TrainTeacherConfig(dataset=demo_sed["spec"], teacher="passt_tiny", out=str(tmp_path / "t"),
                                         epochs=1, device="cpu"))


def test_train_teacher_command_reports_its_checkpoint(demo_asc, tmp_path, tracking_uri):
    from click.testing import CliRunner

    from cli import main

    out = tmp_path / "t"
    result = CliRunner().invoke(main, ["train-teacher", "--dataset", demo_asc["spec"], "--teacher", "ast_tiny",
                                       "--out", str(out), "--epochs", "1", "--seconds", "1.0", "--device", "cpu",
                                       "--tracking-uri", tracking_uri], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"checkpoint {out / 'best.pt'}" in result.output.replace("\n", "")
    assert (out / "best.pt").is_file()
