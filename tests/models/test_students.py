"""Every registered student builds, runs, trains, round-trips; official EfficientAT layouts load strictly."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from layers import CheckpointError, UnknownModelError
from students import STUDENTS, create_student, list_students, student_cfg

LAYOUTS = json.loads((Path(__file__).parents[1] / "data" / "efficientat_release_layouts.json").read_text())["layouts"]
ALL = list_students()
# wide models run one short inference to keep the suite fast; their full-size cost is checked in
# test_students_complexity
BIG = {"mn20", "mn30", "mn40", "dymn10", "dymn20", "fmn10", "fmn10_gru", "fmn10_tf", "fmn10_tcn", "fdymn10_tf"}


def _official_state_dict(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values with the released key names and shapes (integers for BatchNorm counters)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.rand(shape, generator=gen) + 0.5
        for k, shape in layout.items()
    }


def test_registry_covers_every_family():
    families = {n.split("_")[0].rstrip("0123456789") for n in ALL}
    assert {"mn", "dymn", "cp", "fmn", "fdymn"} <= families
    assert {"mn04", "mn10", "mn40", "dymn04", "dymn10", "dymn20", "cp_mobile", "cp_resnet", "fmn10_gru", "fmn10_tf",
            "fmn04_tcn", "fmn04", "fmn_tiny"} <= set(ALL)
    assert list_students("dymn*") == ["dymn04", "dymn10", "dymn20"]


@pytest.mark.parametrize("name", ALL)
def test_classifier_names_and_checkpoint_filter_are_declared(name):
    entry = STUDENTS.get(name)
    assert entry.checkpoint_filter is sys.modules[entry.fn.__module__].checkpoint_filter_fn
    with torch.device("meta"):
        model = create_student(name, 11)
        other = create_student(name, 12).state_dict()
    state = model.state_dict()
    resized = {k for k, v in state.items() if v.shape != other[k].shape}
    prefixes = tuple(f"{layer}." for layer in model.classifier_names)
    assert resized and all(k.startswith(prefixes) for k in resized), resized
    for layer in model.classifier_names:
        assert any(k.startswith(f"{layer}.") for k in resized), f"{layer} is not a layer sized by num_classes"


def test_unknown_student_names_close_matches():
    with pytest.raises(UnknownModelError, match=r"unknown student 'mn11'.*did you mean"):
        create_student("mn11", 10)


def _check_output(model, name: str, logits: torch.Tensor, seconds: float, batch: int) -> None:
    if model.frames_per_second is None:
        assert logits.shape == (batch, 5)
    else:
        assert model.frames_per_second == student_cfg(name)["frames_per_second"] == 25.0
        assert logits.shape == (batch, math.ceil(seconds * model.frames_per_second), 5)


@pytest.mark.parametrize("name", [n for n in ALL if n not in BIG])
def test_student_forward_backward_contract(name):
    torch.manual_seed(0)
    model = create_student(name, num_classes=5)
    assert model.sample_rate == student_cfg(name)["sample_rate"] and model.num_classes == 5
    wave = torch.randn(2, model.sample_rate)
    model.train()
    logits = model(wave)
    _check_output(model, name, logits, 1.0, 2)
    logits.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    spec = model.frontend(wave)
    assert spec.shape == (2, *model.spectrogram_shape(1.0))


@pytest.mark.parametrize("name", sorted(BIG))
def test_big_student_inference_on_a_short_input(name):
    """Wide models: one eval forward on 0.25 s (their training step is exercised by the narrow siblings)."""
    model = create_student(name, num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, model.sample_rate // 4))
    _check_output(model, name, logits, 0.25, 1)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [n for n in ALL if n not in BIG])
def test_state_dict_round_trip_through_a_file(name, tmp_path):
    torch.manual_seed(1)
    model = create_student(name, num_classes=3).eval()
    for m in model.modules():  # non-trivial statistics, so the buffers are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "student.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    torch.manual_seed(2)
    again = create_student(name, num_classes=3, checkpoint=path).eval()
    wave = torch.randn(1, model.sample_rate // 2)
    with torch.no_grad():
        torch.testing.assert_close(again(wave), model(wave))


@pytest.mark.parametrize("name", ["mn04", "mn10", "dymn04", "dymn10"])
def test_official_layout_loads_strictly(name, tmp_path):
    sd = _official_state_dict(LAYOUTS[name])
    path = tmp_path / f"{name}_as.pt"
    torch.save(sd, path)
    model = create_student(name, num_classes=527, checkpoint=path)
    own = model.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", ["mn40", "dymn20"])
def test_big_official_layouts_match_the_model(name):
    with torch.device("meta"):
        model = create_student(name, num_classes=527)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == LAYOUTS[name]


@pytest.mark.parametrize("name", ["mn04", "dymn04"])
def test_new_num_classes_reinitialises_only_the_classifier(name, tmp_path):
    sd = _official_state_dict(LAYOUTS[name])
    path = tmp_path / "release.pt"
    torch.save(sd, path)
    model = create_student(name, num_classes=10, checkpoint=path)
    own = model.state_dict()
    assert own["classifier.5.weight"].shape == (10, own["classifier.2.weight"].shape[0])
    assert own["classifier.5.weight"].abs().max() < 0.1  # fresh N(0, 0.01) init, not the checkpoint's 0.5..1.5
    assert torch.equal(own["classifier.5.bias"], torch.zeros(10))
    assert all(torch.equal(own[k], v) for k, v in sd.items() if not k.startswith("classifier.5."))


def test_new_num_classes_on_cp_mobile_refreshes_conv_and_norm_of_the_head(tmp_path):
    source = create_student("cp_mobile_tiny", num_classes=10)
    path = tmp_path / "cp.pt"
    torch.save({f"model.{k}": v for k, v in source.state_dict().items()}, path)  # Lightning-style keys
    model = create_student("cp_mobile_tiny", num_classes=4, checkpoint=path)
    assert model.feed_forward[0].weight.shape[0] == 4 and model.feed_forward[1].weight.shape == (4,)
    assert torch.equal(model.stages.s1.b1.block[0][0].weight, source.stages.s1.b1.block[0][0].weight)


def test_renamed_key_is_named_in_the_error(tmp_path):
    sd = _official_state_dict(LAYOUTS["mn04"])
    sd["features.0.0.weights"] = sd.pop("features.0.0.weight")
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): features\.0\.0\.weight \(8, 1, 3, 3\).*"
                                              r"unexpected key\(s\): features\.0\.0\.weights"):
        create_student("mn04", num_classes=527, checkpoint=path)


def test_frame_student_starts_from_a_clip_release(tmp_path):
    sd = _official_state_dict(LAYOUTS["mn04"])
    path = tmp_path / "mn04_as.pt"
    torch.save(sd, path)
    model = create_student("fmn04_gru", num_classes=20, checkpoint=path)
    assert torch.equal(model.backbone.features[3].block[0][0].weight, sd["features.3.block.0.0.weight"])
    assert model.strong_head.weight.shape == (20, 512)


def test_frame_rate_is_the_declared_one_for_ten_seconds():
    model = create_student("fmn_tiny", num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 10 * model.sample_rate))
    assert out.shape == (1, 250, 7)


def test_dyconv_temperature_schedule_and_setter():
    from students.dymn import DynamicConv, dyconv_temperature_at, set_dyconv_temperature

    assert dyconv_temperature_at(0) == 30.0 and dyconv_temperature_at(1000) == 1.0
    assert dyconv_temperature_at(5) == 25.0
    model = create_student("dymn04", num_classes=3, temperature=30.0)
    assert {m.temperature for m in model.modules() if isinstance(m, DynamicConv)} == {30.0}
    set_dyconv_temperature(model, 2.0)
    assert {m.temperature for m in model.modules() if isinstance(m, DynamicConv)} == {2.0}


def test_dynamic_conv_equals_a_static_conv_when_one_kernel_dominates():
    from students.dymn import DynamicConv

    conv = DynamicConv(4, 6, context_dim=8, kernel_size=3, k=4)
    with torch.no_grad():
        conv.residuals[0].weight.zero_()
        conv.residuals[0].bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))
    x = torch.randn(2, 4, 5, 7)
    static = conv.weight[0, 0, 0].reshape(6, 4, 3, 3)
    torch.testing.assert_close(conv(x, torch.randn(2, 8, 1, 1)), torch.nn.functional.conv2d(x, static, padding=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_students_run_on_cuda():
    for name in ("mn04", "dymn04", "cp_mobile", "fmn04_tf"):
        model = create_student(name, num_classes=4).cuda().eval()
        with torch.no_grad():
            assert model(torch.randn(2, model.sample_rate, device="cuda")).is_cuda
