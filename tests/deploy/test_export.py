"""kd export: every student family as ONNX (float32 parity with PyTorch, with and without the frontend), metadata,
int8 quantisation, refusal of checkpoints it cannot export, and kd eval / predict / complexity on the exported file."""
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cli import main
from kd.core.complexity import exported_complexity
from kd.data import open_dataset
from kd.deploy.config import ExportConfig
from kd.deploy.export import export_student
from kd.deploy.onnx_runtime import OnnxStudent
from kd.deploy.predict import evaluate_checkpoint, format_predictions, predict_files
from kd.deploy.quantize import FakeQuantized, fold_batchnorm
from kd_errors import KdError
from layers import CheckpointError, sha256_file
from layers.mel import ExportMelSTFT, MelSTFT, exact_log_mel
from students import create_student
from students.dymn import DynamicConv, DyReLU, ExportDynamicConv, ExportDyReLU

PARITY = 1e-4  # max |logit difference| ONNX Runtime vs PyTorch, float32


def make_checkpoint(path, name, demo, seed=0, logit_scale=5.0):
    """A kd distill-style checkpoint of ``name`` for ``demo``'s classes and clip length, conditioned like a trained one.

    Its BatchNorm statistics are those of the data (measured on all training clips), its affine terms are away from
    their identity initialisation (which would hide a wrong folding), and its classifier is scaled so that the
    largest logit on the training clips is ``logit_scale``: an untrained deep stack gives logits from 1e-3 to 1e3.
    """
    data = open_dataset(demo["spec"], split="train")
    torch.manual_seed(seed)
    model = create_student(name, len(data.classes))
    for norm in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_(0, 0.2)
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batch below
    audio = np.stack([data.load_audio(c, model.sample_rate, data.clip_seconds()) for c in data.clips])
    with torch.no_grad():
        spec = model.frontend.eval()(torch.from_numpy(audio))
        model.train().forward_spectrogram(spec)
        head = model.get_submodule(model.classifier_names[-1])
        scale = logit_scale / model.eval().forward_spectrogram(spec).abs().max()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    meta = {"kind": "student", "name": name, "classes": data.classes, "task": data.task.name,
            "seconds": data.clip_seconds(), "dataset": demo["spec"]}
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return str(path)


def eval_audio(demo, model, seconds, count=6):
    data = open_dataset(demo["spec"], split="eval")
    return np.stack([data.load_audio(c, model.sample_rate, seconds) for c in data.clips[:count]])


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _reference(checkpoint, audio):
    from kd.core.checkpoints import load_student

    model, meta = load_student(checkpoint)
    with torch.inference_mode():
        return model(torch.from_numpy(audio)).numpy(), model, meta


@pytest.fixture(scope="module")
def tiny_asc(demo_asc, tmp_path_factory):
    """cp_mobile_tiny exported with its frontend (float32)."""
    folder = tmp_path_factory.mktemp("tiny")
    checkpoint = make_checkpoint(folder / "tiny.pt", "cp_mobile_tiny", demo_asc)
    result = export_student(ExportConfig(checkpoint, str(folder / "tiny.onnx"), calibration=demo_asc["spec"]))
    return checkpoint, result


# --- export-only formulations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "stride", "groups"), [(1, 1, 1), (3, (2, 1), 24), (5, 2, 24), (3, 1, 4)])
def test_export_dynamic_conv_computes_the_same_function(kernel, stride, groups):
    torch.manual_seed(0)
    conv = DynamicConv(24, 48 if groups == 4 else 24 if groups > 1 else 40, context_dim=16, kernel_size=kernel,
                       stride=stride, groups=groups).eval()
    conv.temperature = 0.7
    x, context = torch.randn(3, 24, 17, 23), torch.randn(3, 16, 1, 1)
    with torch.no_grad():
        expected, got = conv(x, context), ExportDynamicConv(conv)(x, context)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_export_dynamic_relu_computes_the_same_function():
    torch.manual_seed(0)
    act = DyReLU(24, context_dim=16).eval()
    torch.nn.init.normal_(act.coef_net[0].weight, std=0.5)  # coefficients far from their initial values
    x, context = torch.randn(3, 24, 9, 11), torch.randn(3, 16, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ExportDyReLU(act)(x, context), act(x, context), atol=1e-6, rtol=0)


def test_exportable_replaces_every_dynamic_conv_and_the_frontend_and_keeps_the_original():
    model = create_student("dymn04", 5).eval()
    copy = model.exportable()
    assert not any(isinstance(m, (DynamicConv, DyReLU, MelSTFT)) for m in copy.modules())
    assert isinstance(copy.frontend, ExportMelSTFT)
    assert sum(isinstance(m, DynamicConv) for m in model.modules()) == 44  # the model itself is untouched
    assert isinstance(model.frontend, MelSTFT)
    spec = model.frontend(torch.randn(2, 32000))
    with torch.no_grad():
        torch.testing.assert_close(copy.forward_spectrogram(spec), model.forward_spectrogram(spec), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["cp_mobile", "cp_resnet_dcase", "mn04", "fmn_tiny"])
def test_export_frontend_computes_what_the_frontend_computes(demo_asc, name):
    """Any clip length (the frame count follows the input) and batch size, within the parity bound of torch's FFT."""
    model = create_student(name, 10).eval()
    audio = torch.from_numpy(eval_audio(demo_asc, model, 1.0, count=3))
    export = model.frontend.exportable()
    with torch.no_grad():
        for clips in (audio, audio[:1, :20001], audio[:2, :model.min_input_samples()]):
            torch.testing.assert_close(export(clips), model.frontend(clips), atol=PARITY, rtol=0)


def test_export_frontend_keeps_the_mel_banks_band_only():
    """CP-Mobile's 256 x 2049 mel matrix (2.1 MB) is stored as its non-zero band."""
    frontend = create_student("cp_mobile", 10).frontend
    export = frontend.exportable()
    stored = sum(b.numel() for name, b in export.named_buffers() if name.startswith("band"))
    assert stored < frontend.mel_basis.numel() / 8
    assert sum(b.numel() for b in export.buffers()) * 4 < 400_000


@pytest.mark.parametrize("name", ["cp_mobile", "fmn_tiny"])
def test_exact_log_mel_is_the_frontend_in_float64(demo_asc, name):
    """The float64 reference of the parity bound computes what MelSTFT computes (else the bound would mean nothing)."""
    model = create_student(name, 10).eval()
    audio = eval_audio(demo_asc, model, 1.0)
    with torch.no_grad():
        float32 = model.frontend(torch.from_numpy(audio))
    exact = exact_log_mel(model.frontend, audio)
    assert exact.dtype == torch.float32 and exact.shape == float32.shape
    difference = (exact - float32).abs()
    assert difference.max() < 1e-4 and difference.median() < 1e-6


# --- float32 parity, metadata, refusal ------------------------------------------------------------------------------


@pytest.mark.slow
def test_exported_frontend_and_network_match_pytorch(demo_asc, tiny_asc, tmp_path):
    checkpoint, result = tiny_asc
    audio = eval_audio(demo_asc, create_student("cp_mobile_tiny", 10), 1.0)
    expected, model, _ = _reference(checkpoint, audio)
    runtime = OnnxStudent(result.path, device="cpu")
    assert np.abs(runtime.logits(audio) - expected).max() <= PARITY
    # the whole file carries the frontend's float32 rounding on (a DFT's, not torch's FFT's): within PyTorch's own
    # distance from exact logits, as for every family
    print(f"whole file {result.parity:.2e}, PyTorch vs exact {result.torch_vs_exact:.2e}")
    assert result.parity <= max(PARITY, 4 * result.torch_vs_exact) and "train clips" in result.parity_inputs
    # the frontend alone: the exported transform against torch.stft
    from onnxruntime import InferenceSession

    merged = onnx.load(result.path)
    frontend = onnx.utils.Extractor(merged).extract_model(["waveform"], ["spectrogram"])
    spec = InferenceSession(frontend.SerializeToString()).run(None, {"waveform": audio})[0]
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(spec), model.frontend(torch.from_numpy(audio)), atol=1e-4, rtol=0)
    # without the frontend the file takes spectrograms; kd computes them from the settings in its metadata
    bare = export_student(ExportConfig(checkpoint, str(tmp_path / "bare.onnx"), frontend=False))
    runtime = OnnxStudent(bare.path, device="cpu")
    assert runtime.info.input == "spectrogram" and runtime.session.get_inputs()[0].name == "spectrogram"
    assert np.abs(runtime.logits(audio) - expected).max() <= PARITY
    assert bare.complexity.frontend_bytes == 0 < result.complexity.frontend_bytes


def test_batch_and_length_are_dynamic(demo_asc, tiny_asc):
    checkpoint, result = tiny_asc
    runtime = OnnxStudent(result.path, device="cpu")
    assert runtime.session.get_inputs()[0].shape == ["batch", "samples"]
    audio = np.concatenate([eval_audio(demo_asc, create_student("cp_mobile_tiny", 10), 1.0)] * 2, axis=1)[:5, :45000]
    expected, _, _ = _reference(checkpoint, audio)
    assert np.abs(runtime.logits(audio) - expected).max() <= PARITY
    assert runtime.logits(audio[:1]).shape == (1, 10)


def test_metadata_round_trips(demo_asc, tiny_asc):
    checkpoint, result = tiny_asc
    props = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    data = open_dataset(demo_asc["spec"], split="train")
    assert json.loads(props["classes"]) == data.classes
    assert props["sample_rate"] == "32000" and float(props["clip_seconds"]) == data.clip_seconds()
    assert props["frames_per_second"] == "none" and props["task"] == "asc" and props["input"] == "waveform"
    assert props["checkpoint_sha256"] == sha256_file(checkpoint) and props["student"] == "cp_mobile_tiny"
    assert props["quantization"] == "none" and int(props["min_samples"]) > 0
    info = OnnxStudent(result.path, device="cpu").info
    assert info.classes == data.classes and info.sample_rate == 32000 and info.frames_per_second is None
    assert info.frontend["n_mels"] == 256 and info.frontend["hop_length"] == 500
    assert result.metadata == props


def test_broken_foreign_and_unexportable_inputs_are_refused_in_one_line(demo_tagging, tiny_asc, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save(create_student("cp_mobile_tiny", 10).state_dict(), foreign)  # a release-style bare state dict
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": {}, "meta": {"kind": "teacher", "name": "passt_tiny"}}, teacher)
    out = tmp_path / "out.onnx"
    for path in (broken, foreign, teacher):
        with pytest.raises(CheckpointError):
            export_student(ExportConfig(str(path), str(out)))
        result = _run("export", str(path), "--out", str(out))
        assert result.exit_code == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # rich may wrap one long line once
    checkpoint, _ = tiny_asc
    with pytest.raises(KdError, match="needs --calibration"):
        ExportConfig(checkpoint, str(out), quantize="int8")
    with pytest.raises(KdError, match=r"\.onnx"):
        ExportConfig(checkpoint, str(tmp_path / "model.pt"))
    assert not out.exists()
    with pytest.raises(KdError, match="other classes"):
        export_student(ExportConfig(checkpoint, str(out), calibration=demo_tagging["spec"]))
    assert not out.exists()
    foreign_onnx = onnx.load(tiny_asc[1].path)
    del foreign_onnx.metadata_props[:]
    onnx.save(foreign_onnx, str(out))
    with pytest.raises(KdError, match="not a model written by kd export"):
        OnnxStudent(str(out), device="cpu")
    for command in (("eval", str(out), "--dataset", demo_tagging["spec"]), ("predict", str(out), str(broken)),
                    ("complexity", str(out))):
        result = _run(*command)
        assert result.exit_code == 2 and "not a model written by kd export" in result.stderr


# --- kd eval / predict / complexity on exported files -------------------------------------------------------------


def test_int8_of_a_dymn_is_refused_in_one_line_before_calibrating(demo_tagging, tmp_path):
    data = open_dataset(demo_tagging["spec"], split="train")
    checkpoint = tmp_path / "dymn.pt"
    meta = {"kind": "student", "name": "dymn04", "classes": data.classes, "task": data.task.name,
            "seconds": data.clip_seconds(), "dataset": demo_tagging["spec"]}
    torch.save({"model": create_student("dymn04", len(data.classes)).state_dict(), "meta": meta}, checkpoint)
    out = tmp_path / "dymn.onnx"
    with pytest.raises(KdError, match="refused for dymn04") as error:
        export_student(ExportConfig(str(checkpoint), str(out), quantize="int8", calibration=demo_tagging["spec"]))
    assert "\n" not in str(error.value) and "float32" in str(error.value) and not out.exists()
    assert create_student("fdymn10_tf", 5).int8_refusal() and create_student("mn04", 5).int8_refusal() is None


def test_eval_of_the_onnx_file_matches_the_checkpoint(demo_asc, tiny_asc):
    checkpoint, result = tiny_asc
    from_checkpoint = evaluate_checkpoint(checkpoint, demo_asc["spec"], device="cpu")
    from_onnx = evaluate_checkpoint(result.path, demo_asc["spec"], device="cpu")
    assert from_onnx == pytest.approx(from_checkpoint, abs=1e-6)
    cli = _run("eval", result.path, "--dataset", demo_asc["spec"], "--json")
    assert cli.exit_code == 0 and json.loads(cli.output)["accuracy"] == pytest.approx(from_checkpoint["accuracy"])


def test_predict_takes_folders_globs_and_lists_and_reports_bad_files(demo_asc, tiny_asc, tmp_path):
    checkpoint, result = tiny_asc
    audio = sorted((Path(demo_asc["path"]) / "audio").glob("*.wav"))
    folder = tmp_path / "clips"
    folder.mkdir()
    for path in audio[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.wav").write_bytes(b"RIFF garbage")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{audio[5]}\n\nclips/{audio[0].name}\n")
    inputs = [str(folder), str(Path(demo_asc["path"]) / "audio" / "*-s4.wav"), str(listing)]
    expected_paths = sorted(str(p) for p in folder.iterdir()) + \
        sorted(str(p) for p in (Path(demo_asc["path"]) / "audio").glob("*-s4.wav")) + \
        [str(audio[5]), str(tmp_path / "clips" / audio[0].name)]
    from_onnx = predict_files(result.path, inputs, device="cpu", batch_size=2, workers=3)
    from_checkpoint = predict_files(checkpoint, inputs, device="cpu")
    assert [p.path for p in from_onnx] == expected_paths
    broken = [p for p in from_onnx if p.error]
    assert [p.path for p in broken] == [str(folder / "broken.wav")] and broken[0].top is None
    for a, b in zip(from_onnx, from_checkpoint):
        assert a.error == b.error
        if a.top:
            assert [c for c, _ in a.top] == [c for c, _ in b.top]
            assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-5)
            assert len(a.top) == 3 and a.top[0][1] >= a.top[1][1] >= a.top[2][1]
    rows = list(csv.reader(io.StringIO(format_predictions(from_onnx, "csv"))))
    assert rows[0] == ["path", "start", "end", "class_1", "probability_1", "class_2", "probability_2", "class_3",
                       "probability_3", "error"]
    assert len(rows) == len(from_onnx) + 1 and rows[1 + expected_paths.index(str(folder / "broken.wav"))][-1]
    assert json.loads(format_predictions(from_onnx, "json"))[0]["top"][0]["class"] == from_onnx[0].top[0][0]
    with pytest.raises(KdError, match="no such file"):
        predict_files(result.path, [str(tmp_path / "missing.wav")])
    with pytest.raises(KdError, match="matches no file"):
        predict_files(result.path, [str(tmp_path / "*.flac")])


def test_predict_command_prints_one_table_or_csv(demo_asc, tiny_asc):
    _, result = tiny_asc
    folder = Path(demo_asc["path"]) / "audio"
    table = _run("predict", result.path, str(folder / "*-s5.wav"))
    assert table.exit_code == 0
    names = sorted(p.name for p in folder.glob("*-s5.wav"))
    assert all(name in table.output for name in names)  # each file on one row, its name never wrapped
    assert table.output.count("files in") == 1
    as_csv = _run("predict", result.path, str(folder / "*-s5.wav"), "--format", "csv")
    assert as_csv.exit_code == 0 and len(as_csv.output.strip().splitlines()) == len(names) + 1


def test_complexity_of_an_exported_file(tiny_asc):
    _, result = tiny_asc
    cost = exported_complexity(result.path)
    reference = create_student("cp_mobile_tiny", 10)
    batchnorm = sum(m.weight.numel() + m.bias.numel() for m in reference.modules()
                    if isinstance(m, torch.nn.BatchNorm2d))
    params = sum(p.numel() for p in reference.parameters())
    # BatchNorm is folded: each norm leaves one bias per channel instead of a weight and a bias
    assert params - batchnorm <= cost.params <= params
    assert cost.stored_bytes == {"float32": 4 * cost.params} and cost.param_bytes == 4 * cost.params
    assert cost.dcase23["param_bytes_ok"] and cost.dcase23["macs_per_second_ok"]
    figures = json.loads(_run("complexity", result.path, "--json").output)
    assert figures["params"] == cost.params and figures["dcase23"]["ok"] is True
    named = json.loads(_run("complexity", "cp_mobile", "--json").output)
    assert named["param_bytes_by_dtype"] == {"float32": 4 * named["params"], "float16": 2 * named["params"],
                                             "int8": named["params"]}
    assert named["dcase23"]["param_bytes_ok"] is False  # 32-bit parameters are over the limit


@pytest.mark.slow
def test_int8_export_quantises_the_network_and_checks_it(demo_asc, tiny_asc, tmp_path):
    checkpoint, float_result = tiny_asc
    result = export_student(ExportConfig(checkpoint, str(tmp_path / "int8.onnx"), quantize="int8",
                                         calibration=demo_asc["spec"], calibration_clips=24))
    report = result.quantization
    assert report is not None and report.metric == "accuracy" and report.calibration_clips == 24
    assert report.check_clips == len(open_dataset(demo_asc["spec"], split="eval").labelled_clips)
    assert report.drop == pytest.approx(report.float32 - report.int8)
    assert report.float32_ms > 0 and report.int8_ms > 0  # what the deployer learns about speed on this machine
    ops = {n.op_type for n in onnx.load(result.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "STFT" not in ops
    assert result.metadata["quantization"].startswith("int8")
    cost = result.complexity
    assert cost.stored_bytes["int8"] > 0.9 * cost.params and cost.quantization_bytes > 0
    assert cost.param_bytes < float_result.complexity.param_bytes / 3
    assert evaluate_checkpoint(result.path, demo_asc["spec"], device="cpu")["accuracy"] == pytest.approx(report.int8)


def test_folded_batchnorm_and_fake_quantisation_keep_the_function(demo_asc, tiny_asc):
    checkpoint, _ = tiny_asc
    from kd.core.checkpoints import load_student

    model, _ = load_student(checkpoint)
    folded = fold_batchnorm(model.exportable())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    audio = torch.from_numpy(eval_audio(demo_asc, model, 1.0))
    with torch.no_grad():
        spec = model.frontend(audio)
        torch.testing.assert_close(folded.forward_spectrogram(spec), model.forward_spectrogram(spec), atol=1e-4, rtol=1e-4)
    conv = folded.stages[0][0].block[0][0]
    fake = FakeQuantized(conv).train()
    x = torch.relu(torch.randn(2, conv.in_channels, 16, 8))
    out = fake(x)
    out.square().sum().backward()  # gradients pass through the rounding
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        exact = conv(x)
    error = (out.detach() - exact).abs().max()
    assert 0 < error < 0.05 * exact.abs().max()  # int8 rounding: visible, small


@pytest.mark.slow
def test_quantisation_aware_fine_tuning_replaces_post_training_only_when_better(demo_asc, tiny_asc, tmp_path):
    checkpoint, _ = tiny_asc
    result = export_student(ExportConfig(checkpoint, str(tmp_path / "qat.onnx"), quantize="int8",
                                         calibration=demo_asc["spec"], calibration_clips=16, max_drop=-1.0,
                                         qat_epochs=1))
    report = result.quantization
    if report.method == "post-training":  # fine-tuning ran (any drop exceeds -1) but did not drop less
        assert report.post_training_int8 is None and "quantisation-aware" not in result.metadata["quantization"]
    else:
        assert report.method == "quantisation-aware (1 epochs)" and report.post_training_int8 is not None
        assert report.float32 - report.post_training_int8 > report.drop
        assert "quantisation-aware" in result.metadata["quantization"]
    assert evaluate_checkpoint(result.path, demo_asc["spec"], device="cpu")["accuracy"] == pytest.approx(report.int8)


@pytest.mark.slow
def test_export_command_reports_the_checks(demo_asc, tiny_asc, tmp_path):
    checkpoint, _ = tiny_asc
    out = tmp_path / "cli.onnx"
    result = _run("export", checkpoint, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # the whole file within PyTorch's own distance from exact logits, as in test_exported_frontend_and_network_match_pytorch
    assert report["parity"] <= max(PARITY, 4 * report["torch_vs_exact"])
    assert report["metadata"]["student"] == "cp_mobile_tiny" and out.is_file()
    table = _run("export", checkpoint, "--out", str(tmp_path / "int8.onnx"), "--quantize", "int8", "--calibration",
                 demo_asc["spec"], "--calibration-clips", "8", "--qat-epochs", "0")
    assert table.exit_code == 0, table.output
    assert "float32 parity" in table.output and "DCASE'23" in table.output
    assert "latency, one clip, one thread" in table.output and "ms, int8" in table.output


# --- every family ---------------------------------------------------------------------------------------------------

FAMILIES = [
    ("cp_mobile", "demo_asc"),
    ("cp_resnet_dcase", "demo_asc"),
    ("mn01", "demo_tagging"),
    ("dymn04", "demo_tagging"),
    ("fmn_tiny", "demo_sed"),  # BiGRU
    ("fmn04_tf", "demo_sed"),  # RoFormer blocks
    ("fmn04_tcn", "demo_sed"),  # temporal conv net
]


# With the frontend, the file's network (spectrogram in) is checked too; without it only the input differs, so that
# path runs for one student of each task rather than for all.
EXPORTS = [(*family, True) for family in FAMILIES] + [(name, demo, False) for name, demo in FAMILIES
                                                       if name in ("cp_mobile", "mn01", "fmn_tiny")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "demo_fixture", "frontend"), EXPORTS,
                         ids=[f"{name}-{'waveform' if frontend else 'spectrogram'}" for name, _, frontend in EXPORTS])
def test_every_family_exports_and_matches_pytorch(name, demo_fixture, frontend, request, tmp_path):
    """Each part within 1e-4 of PyTorch at its own interface: the network's logits (spectrogram in) and the frontend's
    spectrograms. The whole file (waveform in) within 1e-4 too where float32 rounding allows (the clip students);
    students with many output frames or a high gain carry the frontend's float32 rounding (two FFTs round quiet bins
    differently by ~1e-5 after the log) further, in PyTorch as much as in ONNX Runtime: there the file stays within a
    few times PyTorch's own distance from exact logits (those of a float64 frontend)."""
    demo = request.getfixturevalue(demo_fixture)
    checkpoint = make_checkpoint(tmp_path / f"{name}.pt", name, demo)
    result = export_student(ExportConfig(checkpoint, str(tmp_path / f"{name}.onnx"), frontend=frontend,
                                         calibration=demo["spec"]))
    seconds = open_dataset(demo["spec"]).clip_seconds()
    audio = eval_audio(demo, create_student(name, 10), seconds, count=4)
    expected, model, _ = _reference(checkpoint, audio)
    runtime = OnnxStudent(result.path, device="cpu")
    got = runtime.logits(audio)
    assert got.shape == expected.shape
    parity = float(np.abs(got - expected).max())
    # the exporter's bound: 1e-4 relative to the largest logit (a BiGRU's float32 rounding over 250 frames differs
    # with PyTorch's thread count by ~1.5e-4 on logits of a few units)
    network_bound = PARITY * max(1.0, float(np.abs(expected).max()))
    assert result.network_parity <= network_bound
    if not frontend:
        assert parity <= network_bound and result.frontend_parity is None
    else:
        with torch.inference_mode():
            spectrogram = model.frontend(torch.from_numpy(audio)).numpy()
            exact = model.forward_spectrogram(exact_log_mel(model.frontend, audio)).numpy()
        frontend_graph = onnx.utils.Extractor(onnx.load(result.path)).extract_model(["waveform"], ["spectrogram"])
        from onnxruntime import InferenceSession

        onnx_spectrogram = InferenceSession(frontend_graph.SerializeToString()).run(None, {"waveform": audio})[0]
        assert np.abs(onnx_spectrogram - spectrogram).max() <= PARITY and result.frontend_parity <= PARITY
        torch_vs_exact = float(np.abs(expected - exact).max())
        print(f"{name}: max |logit| {np.abs(expected).max():.2f}, ONNX Runtime vs PyTorch {parity:.2e}, "
              f"PyTorch vs exact {torch_vs_exact:.2e}")
        assert parity <= max(PARITY, 4 * torch_vs_exact)
        if name in ("cp_mobile", "cp_resnet_dcase"):
            assert parity <= PARITY
    if model.frames_per_second:
        assert runtime.frames_per_second == model.frames_per_second == 25.0
        events = predict_files(result.path, [open_dataset(demo["spec"], split="eval").clips[0].source],
                               threshold=0.0, device="cpu")[0].events
        assert events and all(0 <= on < off <= seconds for on, off, _ in events)


def test_int8_operator_forms_compute_the_same_function():
    """HardSwish and spatial means become operators ONNX Runtime runs in int8, with the same outputs in float32."""
    from onnxruntime import InferenceSession

    from kd.deploy.graph import Network, to_onnx
    from kd.deploy.quantize import in_int8_operators

    torch.manual_seed(0)
    model = create_student("mn01", 5).eval()
    spec = torch.randn(2, 1, 128, 64)
    network = to_onnx(Network(model.exportable()), spec, "spectrogram", "logits", {0: "batch", 3: "frames"},
                      {0: "batch"})
    rewritten = in_int8_operators(network)
    ops = {n.op_type for n in rewritten.graph.node}
    assert "HardSwish" not in ops and "GlobalAveragePool" in ops
    run = [InferenceSession(g.SerializeToString()).run(None, {"spectrogram": spec.numpy()})[0]
           for g in (network, rewritten)]
    np.testing.assert_allclose(run[1], run[0], atol=1e-5, rtol=0)


def test_products_by_a_constant_between_quantisations_become_scales():
    """``Q -> DQ -> Mul(1/6) -> Q`` (HardSwish's last product) becomes one quantisation, within one step of the
    original; a product by a negative constant or by a computed tensor stays."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime import InferenceSession

    from kd.deploy.quantize import constant_products_as_scales

    def const(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["qx"]),
             helper.make_node("DequantizeLinear", ["qx", "s1", "z"], ["dx"]),
             helper.make_node("DequantizeLinear", ["qc", "sc", "zc"], ["c"]),
             helper.make_node("Mul", ["dx", "c"], ["y"], name="sixth"),
             helper.make_node("QuantizeLinear", ["y", "s2", "z"], ["qy"]),
             helper.make_node("DequantizeLinear", ["qy", "s2", "z"], ["dy"]),
             helper.make_node("Mul", ["dy", "negative"], ["out"], name="negated")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [64])],
        [const("s1", 0.05), const("s2", 0.05 / 6), const("z", 0, np.uint8), const("qc", 85, np.uint8),
         const("sc", 1 / 510), const("zc", 0, np.uint8), const("negative", -1.0)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folded = constant_products_as_scales(model)
    assert [n.name for n in folded.graph.node if n.op_type == "Mul"] == ["negated"]
    x = np.linspace(0, 12, 64, dtype=np.float32)
    before, after = (InferenceSession(m.SerializeToString()).run(None, {"x": x})[0] for m in (model, folded))
    assert np.abs(after - before).max() <= 0.05 / 6 + 1e-7
