"""kd.core.complexity reproduces the papers' parameter and MAC figures and counts each layer kind correctly."""
import json

import pytest
import torch
import torchinfo

from kd.core.complexity import complexity, count_macs, published_check
from kd_errors import KdError
from students import create_student, list_students, student_cfg

PUBLISHED = [n for n in list_students() if student_cfg(n).get("published")]
LIMITED = [n for n in list_students() if student_cfg(n).get("limits")]
REFERENCE = [n for n in list_students() if student_cfg(n).get("reference_state_size")]


def _build(name: str):
    with torch.device("meta"):  # shapes only: the count needs no values, and mn40 builds instantly
        return create_student(name, num_classes=student_cfg(name)["num_classes"])


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_params_and_macs_are_reproduced(name):
    cfg = student_cfg(name)
    result = complexity(_build(name), seconds=cfg["published"]["seconds"])
    checks = published_check(result)
    assert set(checks) == {"params_m", "gmacs"}
    skipped = set(cfg.get("unreproducible", ()))
    for key, (measured, published, ok) in checks.items():
        if key not in skipped:
            assert ok, f"{name}: {key} measured {measured:.4f}, published {published}"


@pytest.mark.parametrize("name", REFERENCE)
def test_state_size_equals_the_reference_code(name):
    """Exact: the reference implementation's state dict without BatchNorm statistics has this many numbers."""
    model = _build(name)
    size = sum(v.numel() for k, v in model.state_dict().items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert size == student_cfg(name)["reference_state_size"]


@pytest.mark.parametrize("name", LIMITED)
def test_dcase_students_fit_the_challenge_limits(name):
    limits = student_cfg(name)["limits"]
    result = complexity(name, seconds=limits["seconds"])
    assert result.params <= limits["params"] and result.macs <= limits["macs"]
    assert result.input_shape[-2] == 256  # 256 mel bins of the DCASE'23 frontend


def test_cp_mobile_figures_and_torchinfo_agreement():
    """NeSsi (torchinfo) counts BatchNorm's affine parameters as MACs; without them the counts are identical."""
    model = create_student("cp_mobile", num_classes=10)
    ours = complexity(model, seconds=1.0)
    assert (ours.params, ours.macs) == (126_952, 28_889_088)

    class Spectrogram(torch.nn.Module):
        def __init__(self, student):
            super().__init__()
            self.student = student

        def forward(self, x):
            return self.student.forward_spectrogram(x)

    info = torchinfo.summary(Spectrogram(model), input_size=ours.input_shape, verbose=0)
    bn_affine = sum(2 * m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert info.total_params == ours.params
    assert info.total_mult_adds == ours.macs + bn_affine


def test_gru_macs_are_parameters_times_frames():
    model = create_student("fmn_tiny", num_classes=5)
    shape = (1, *model.spectrogram_shape(4.0))
    gru_params = sum(p.numel() for p in model.seq_model.rnn.parameters())
    assert count_macs(model, shape)["recurrent"] == 100 * gru_params


def test_attention_matmuls_are_counted():
    model = create_student("fmn04_tf", num_classes=5)
    by_kind = count_macs(model, (1, *model.spectrogram_shape(10.0)))
    layers, heads, head_dim, frames = 2, 8, 32, 250
    assert by_kind["RotaryAttention"] == layers * 2 * heads * frames * frames * head_dim
    # Linear layers run on every frame: projection 384->256, qkv, out, gates, feed-forward, head
    per_frame = (384 * 256 + 256) + layers * (256 * 768 + 256 * 256 + (256 * 8 + 8) + (256 * 1024 + 1024)
                                              + (1024 * 256 + 256)) + (256 * 5 + 5)
    squeeze_excitation = sum(p.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)
                             for p in m.parameters())  # channel SE: once per clip
    assert by_kind["linear"] == frames * per_frame + squeeze_excitation


def test_dynamic_conv_counts_the_mixed_kernel_not_all_k():
    model = create_student("dymn04", num_classes=527)
    by_kind = count_macs(model, (1, 1, 128, 1000))
    static = create_student("mn04", num_classes=527)
    static_conv = count_macs(static, (1, 1, 128, 1000))["conv"]
    # the dynamic trunk does the same convolutions as mn04 (plus K-way kernel mixing), not K times as many
    assert 0.7 * static_conv < by_kind["DynamicConv"] < 1.3 * static_conv


def test_result_is_json_ready_with_plain_ints():
    result = complexity("cp_mobile_tiny", seconds=1.0, precision_bits=8)
    data = json.loads(json.dumps(result.to_dict()))
    assert type(data["params"]) is int and type(data["macs"]) is int
    assert data["param_bytes"] == data["params"] and data["seconds"] == 1.0 and data["name"] == "cp_mobile_tiny"


def test_macs_scale_with_seconds_and_default_seconds_come_from_the_cfg():
    short, long = complexity("mn04", seconds=1.0), complexity("mn04", seconds=10.0)
    assert 8 < long.macs / short.macs < 11
    assert complexity("cp_mobile").seconds == 1.0


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(KdError, match="seconds must be positive"):
        complexity("mn04", seconds=0)
    with pytest.raises(KdError, match="not a student"):
        complexity(torch.nn.Linear(2, 2), seconds=1.0)
