"""Device-specific checkpoints (kd device-finetune): the general model and one parameter set per device in one file;
loading, kd eval (each clip through its device's model), kd predict --device-id, kd export --device-id and kd
submit."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from kd.core.checkpoints import DEVICE_MODELS, load_student
from kd.data import open_dataset
from kd.deploy.predict import evaluate_checkpoint, predict_files
from kd.train.devices import write_device_checkpoint
from kd_errors import KdError
from layers import CheckpointError, read_checkpoint
from students import create_student

STUDENT = "cp_mobile_tiny"


def _save(path, weights, demo):
    data = open_dataset(demo["spec"], split="train")
    meta = {"kind": "student", "name": STUDENT, "classes": data.classes, "task": "asc",
            "seconds": data.clip_seconds(), "dataset": demo["spec"], "train_split": "train"}
    torch.save({"model": weights, "meta": meta}, path)
    return str(path)


def _device_weights(general, seed):
    """The general weights with the classifier and one BatchNorm's statistics changed, as a fine-tune would."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(general)
    changed = [k for k in general if k.endswith("running_mean")][:1] + [k for k in general if "classifier" in k
                                                                          and general[k].is_floating_point()]
    for key in changed:
        out[key] = general[key] + torch.randn(general[key].shape, generator=generator)
    return out, changed


@pytest.fixture(scope="module")
def device_checkpoint(demo_asc, tmp_path_factory):
    """A device-specific checkpoint with parameters for devices a and s1 (both seen in training)."""
    folder = tmp_path_factory.mktemp("devices")
    torch.manual_seed(0)
    general = create_student(STUDENT, 10).state_dict()
    plain = {"general": _save(folder / "general.pt", general, demo_asc)}
    changed = {}
    for seed, device in enumerate(("a", "s1"), start=1):
        weights, changed[device] = _device_weights(general, seed)
        plain[device] = _save(folder / f"{device}.pt", weights, demo_asc)
    path = write_device_checkpoint(plain["general"], {d: plain[d] for d in ("a", "s1")}, folder / "device_specific.pt")
    return str(path), plain, changed


def _weights_equal(model, path):
    expected = read_checkpoint(path)["model"]
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_the_checkpoint_holds_the_general_model_and_each_devices_changed_tensors(device_checkpoint):
    path, plain, changed = device_checkpoint
    state = read_checkpoint(path)
    general = read_checkpoint(plain["general"])
    assert state["meta"][DEVICE_MODELS] == ["a", "s1"] and state["meta"]["name"] == STUDENT
    assert state["model"].keys() == general["model"].keys()
    assert all(torch.equal(v, general["model"][k]) for k, v in state["model"].items())
    for device in ("a", "s1"):  # only what the fine-tune changed is stored
        assert sorted(state[DEVICE_MODELS][device]) == sorted(changed[device])
    model, meta = load_student(path)  # a reader that knows nothing of devices gets the general model
    assert _weights_equal(model, plain["general"]) and meta["device_model"] is None


def test_loading_with_a_device_id_gives_its_parameters_and_unseen_devices_the_general_ones(device_checkpoint):
    path, plain, _ = device_checkpoint
    for device in ("a", "s1"):
        model, meta = load_student(path, device)
        assert _weights_equal(model, plain[device]) and meta["device_model"] == device
    model, meta = load_student(path, "s4")  # a device the checkpoint has no parameters for
    assert _weights_equal(model, plain["general"]) and meta["device_model"] is None
    with pytest.raises(KdError, match="holds no device-specific parameters"):
        load_student(plain["general"], "a")


def test_eval_runs_each_clip_through_its_devices_model(demo_asc, device_checkpoint):
    path, plain, _ = device_checkpoint
    spec = demo_asc["spec"]
    metrics = evaluate_checkpoint(path, spec, device="cpu")
    per_model = {name: evaluate_checkpoint(file, spec, device="cpu") for name, file in plain.items()}
    for device in ("a", "s1"):
        assert metrics[f"acc_{device}"] == per_model[device][f"acc_{device}"]
    for device in ("b", "c", "s2", "s3", "s4", "s5", "s6"):
        assert metrics[f"acc_{device}"] == per_model["general"][f"acc_{device}"]
    # the overall accuracy counts each clip as its own device's model got it
    data = open_dataset(spec, split="eval")
    counts = {d: sum(c.device == d for c in data.labelled_clips) for d in data.devices}
    correct = sum(counts[d] * per_model[d if d in ("a", "s1") else "general"][f"acc_{d}"] for d in counts)
    assert metrics["accuracy"] == pytest.approx(correct / sum(counts.values()))


def test_predict_with_a_device_id_uses_that_devices_parameters(demo_asc, device_checkpoint):
    path, plain, _ = device_checkpoint
    clip = open_dataset(demo_asc["spec"], split="eval").clips[0].source

    def top(model, device_id=None):
        return predict_files(model, [clip], top=10, device="cpu", device_id=device_id)[0].top

    assert top(path, "s1") == top(plain["s1"]) != top(plain["general"])
    assert top(path, "s6") == top(plain["general"])  # an unseen device falls back to the general model
    result = CliRunner().invoke(main, ["predict", path, clip, "--device-id", "a", "--format", "json", "--top", "10",
                                       "--device", "cpu"])
    assert result.exit_code == 0
    rows, expected = json.loads(result.output)[0]["top"], top(plain["a"])
    assert [e["class"] for e in rows] == [name for name, _ in expected]
    assert [e["probability"] for e in rows] == pytest.approx([p for _, p in expected])
    result = CliRunner().invoke(main, ["predict", plain["general"], clip, "--device-id", "a"])
    assert result.exit_code == 2 and "holds no device-specific parameters" in result.stderr


def test_a_device_model_from_other_weights_is_refused(demo_asc, device_checkpoint, tmp_path):
    _, plain, _ = device_checkpoint
    torch.manual_seed(0)
    other = _save(tmp_path / "other.pt", create_student("cp_mobile", 10).state_dict(), demo_asc)
    with pytest.raises(CheckpointError, match="another model"):
        write_device_checkpoint(plain["general"], {"a": other}, tmp_path / "bad.pt")


@pytest.mark.slow
def test_export_with_a_device_id_round_trips_that_devices_model(demo_asc, device_checkpoint, tmp_path):
    from kd.deploy.config import ExportConfig
    from kd.deploy.export import export_student
    from kd.deploy.graph import PARITY_TOLERANCE
    from kd.deploy.onnx_runtime import OnnxStudent

    path, plain, _ = device_checkpoint
    data = open_dataset(demo_asc["spec"], split="eval")
    audio = np.stack([data.load_audio(c, 32000, 1.0) for c in data.clips[:6]])
    result = export_student(ExportConfig(path, str(tmp_path / "s1.onnx"), device_id="s1"))
    assert result.metadata["device_id"] == "s1"
    model, _ = load_student(path, "s1")
    general, _ = load_student(path)
    with torch.inference_mode():
        expected, other = model(torch.from_numpy(audio)).numpy(), general(torch.from_numpy(audio)).numpy()
    got = OnnxStudent(result.path, device="cpu").logits(audio)
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= tolerance < np.abs(got - other).max()
    # the exported file evaluates like the checkpoint with s1's parameters
    assert evaluate_checkpoint(result.path, demo_asc["spec"], device="cpu") == pytest.approx(
        evaluate_checkpoint(plain["s1"], demo_asc["spec"], device="cpu"), abs=1e-6)
    # an explicit --device-id the checkpoint has no parameters for is refused: a file named for s6 would hold the
    # general model; kd predict, which runs clips of any device, falls back instead
    result = CliRunner().invoke(main, ["export", path, "--device-id", "s6", "--out", str(tmp_path / "s6.onnx")])
    assert result.exit_code == 2 and "no parameters for device s6 (it has: a, s1)" in result.stderr
    assert not (tmp_path / "s6.onnx").exists()
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "s1.onnx"), data.clips[0].source, "--device-id", "s1"])
    assert result.exit_code == 2 and "holds one model" in result.stderr


@pytest.mark.slow
def test_a_submission_predicts_each_file_with_its_devices_parameters(demo_asc, device_checkpoint, tmp_path):
    import yaml

    from kd.deploy.submit import SubmitConfig, submit

    path, _, _ = device_checkpoint
    result = submit(SubmitConfig(path, demo_asc["spec"], str(tmp_path), "Kd_DEMO_task1_1", score_split="eval",
                                 device="cpu"))
    assert result.accuracy == pytest.approx(evaluate_checkpoint(path, demo_asc["spec"], device="cpu")["accuracy"])
    assert yaml.safe_load(result.meta.read_text())["system"]["device_specific_models"] == ["a", "s1"]
