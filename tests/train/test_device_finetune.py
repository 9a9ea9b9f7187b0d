"""kd device-finetune: a distilled student fine-tuned (still distilling) on each training device's clips, into one
device-specific checkpoint that kd eval scores clip by clip; training on a device subset."""
import mlflow
import pytest
import torch
from click.testing import CliRunner

from cli import main
from kd.core.checkpoints import DEVICE_MODELS, TeacherSpec, load_student
from kd.deploy.predict import evaluate_checkpoint
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd.train.devices import DeviceFinetuneConfig, finetune_devices
from kd.train.distill import DistillConfig, TeacherChoice, distill
from kd.train.job import open_splits
from kd_errors import KdError
from layers import read_checkpoint


def test_training_on_some_devices_keeps_their_clips_and_names_the_devices_a_split_has(demo_asc, tmp_path):
    options = {"dataset": demo_asc["spec"], "student": "cp_mobile_tiny", "out": str(tmp_path)}
    train, evaluation = open_splits(DistillConfig(train_devices=("a", "s1"), eval_devices=("s4",), **options))
    assert train.devices == ["a", "s1"] and len(train) == sum(c.device in ("a", "s1") for c in open_splits(
        DistillConfig(**options))[0].clips)
    assert evaluation.devices == ["s4"]
    with pytest.raises(KdError, match=r"the train split of .* has no clips of device s4 \(it has: a, b, c, s1, s2, "
                                      r"s3\)"):
        open_splits(DistillConfig(train_devices=("s4",), **options))


@pytest.mark.slow
def test_device_finetune_writes_one_checkpoint_that_eval_scores_per_device(demo_asc, tmp_path, tracking_uri):
    store = str(tmp_path / "store.zarr")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        run_teach(TeachConfig(dataset=demo_asc["spec"], store=store, teachers=(TeacherSpec.parse("passt_tiny"),),
                              chunk_size=16, tracking_uri=tracking_uri))
    options = {"dataset": demo_asc["spec"], "store": store, "teachers": TeacherChoice.parse("passt_tiny"),
               "batch_size": 8, "device": "cpu", "tracking_uri": tracking_uri}
    general = distill(DistillConfig(student="cp_mobile_tiny", out=str(tmp_path / "general"), epochs=1,
                                    log_model=False, **options)).checkpoint
    cfg = DeviceFinetuneConfig.create(general, devices=("a", "s1"), out=str(tmp_path / "devices"), epochs=1, lr=1e-3,
                                      **options)
    result = finetune_devices(cfg)

    state = read_checkpoint(result.checkpoint)
    assert result.devices == state["meta"][DEVICE_MODELS] == ["a", "s1"]
    assert all(torch.equal(v, read_checkpoint(general)["model"][k]) for k, v in state["model"].items())
    for device in ("a", "s1"):  # each fine-tune: still distilling, from the general weights, on its device's clips
        run = result.runs[device]
        params = mlflow.MlflowClient(tracking_uri).get_run(run.run_id).data
        assert params.params["teachers"] == "passt_tiny" and params.params["pretrained"] == general
        assert params.tags["train_devices"] == device and params.tags["eval_devices"] == device
        tuned = read_checkpoint(run.checkpoint)["model"]
        assert state[DEVICE_MODELS][device] and all(torch.equal(v, tuned[k])
                                                    for k, v in state[DEVICE_MODELS][device].items())
        model, _ = load_student(result.checkpoint, device)
        assert all(torch.equal(v, tuned[k]) for k, v in model.state_dict().items())
    # kd eval on the checkpoint is the run's device-specific score; the general model's is the general checkpoint's
    assert evaluate_checkpoint(result.checkpoint, demo_asc["spec"], device="cpu") == pytest.approx(
        result.device_specific)
    assert evaluate_checkpoint(general, demo_asc["spec"], device="cpu") == pytest.approx(result.general)
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    assert run.metrics["accuracy_gain"] == pytest.approx(result.gain)
    assert run.params["devices"] == "a,s1" and "general_accuracy" in run.metrics
    # an unknown device, or a checkpoint that is device-specific already, is refused in one line
    for checkpoint, devices, message in ((general, "a,zz", "has no clips of device zz"),
                                         (result.checkpoint, "a", "device-specific already")):
        cli = CliRunner().invoke(main, ["device-finetune", checkpoint, "--dataset", demo_asc["spec"], "--devices",
                                        devices, "--out", str(tmp_path / "refused"), "--device", "cpu"])
        assert cli.exit_code == 2 and message in cli.stderr and "Traceback" not in cli.stderr
