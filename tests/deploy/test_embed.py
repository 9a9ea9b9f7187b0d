"""kd embed and the HEAR-shaped API: what the classifier reads, per window or frame, with the times, for
checkpoints, exported files and teachers alike."""
import numpy as np
import pytest
import soundfile as sf
import torch
import zarr
from click.testing import CliRunner

from cli import main
from kd.data import open_dataset
from kd.embed import get_scene_embeddings, get_timestamp_embeddings, load_model
from kd_errors import KdError
from students import create_student


def save_student(path, name, classes, task, seconds):
    torch.manual_seed(0)
    model = create_student(name, len(classes))
    torch.save({"model": model.state_dict(), "meta": {"kind": "student", "name": name, "classes": classes,
                                                      "task": task, "seconds": seconds}}, path)
    return str(path)


@pytest.fixture(scope="module")
def scene_student(demo_asc, tmp_path_factory):
    classes = open_dataset(demo_asc["spec"], split="train").classes
    return save_student(tmp_path_factory.mktemp("embed") / "asc.pt", "cp_mobile_tiny", classes, "asc", 1.0)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """7.3 s of noise at 32 kHz."""
    path = tmp_path_factory.mktemp("rec") / "rec.wav"
    sf.write(path, np.random.default_rng(1).normal(0, 0.1, int(7.3 * 32000)).astype(np.float32), 32000)
    return str(path)


def test_a_clip_model_embeds_each_window_at_its_centre(scene_student, recording):
    model = load_model(scene_student)
    assert model.sample_rate == 32000 and model.scene_embedding_size == model.timestamp_embedding_size == 40
    audio = torch.from_numpy(sf.read(recording, dtype="float32")[0])[None].repeat(2, 1)
    embeddings, stamps = get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (2, 8, 40) and stamps.shape == (2, 8)
    assert np.allclose(stamps[0], [500, 1500, 2500, 3500, 4500, 5500, 6500, 7150])  # ms, the last window 7-7.3 s
    scene = get_scene_embeddings(audio, model)
    weights = torch.tensor([1.0] * 7 + [0.3])
    assert scene.shape == (2, 40) and torch.allclose(scene[0], (embeddings[0] * weights[:, None]).sum(0) / 7.3,
                                                     atol=1e-5)
    one_window = get_scene_embeddings(audio[:, :32000], model)  # the second window alone gives its own embedding
    assert torch.allclose(one_window[0], embeddings[0, 0], atol=1e-5)


def test_a_frame_wise_model_embeds_each_frame(tmp_path):
    checkpoint = save_student(tmp_path / "sed.pt", "fmn_tiny", ["a", "b", "c"], "sed", 2.0)
    model = load_model(checkpoint)
    audio = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (1, int(5.1 * model.sample_rate))))
    embeddings, stamps = get_timestamp_embeddings(audio.float(), model)
    frames = int(np.ceil(5.1 * 25))  # fmn_tiny: 25 frames/s; windows of 2 s every 1 s, averaged where they overlap
    assert embeddings.shape == (1, frames, 64) and np.allclose(stamps[0], (np.arange(frames) + 0.5) * 40)
    assert torch.allclose(get_scene_embeddings(audio.float(), model)[0], embeddings[0].mean(0), atol=1e-5)


def test_a_teacher_embeds_what_its_head_reads(recording):
    model = load_model("passt_tiny")  # the demo release that ships with kd
    audio = torch.from_numpy(sf.read(recording, dtype="float32")[0])[None]
    embeddings, stamps = get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (1, 8, 192) and torch.isfinite(embeddings).all()
    assert np.allclose(stamps[0], [500, 1500, 2500, 3500, 4500, 5500, 6500, 7150])  # its 1 s clips as windows
    with pytest.raises(KdError, match="needs a model"):
        load_model("")


@pytest.mark.slow
def test_embed_writes_zarr_and_npz_and_an_exported_file_embeds_like_its_checkpoint(scene_student, recording,
                                                                                   demo_asc, tmp_path):
    from kd.deploy.config import ExportConfig
    from kd.deploy.export import export_student

    short = tmp_path / "short.wav"
    sf.write(short, np.random.default_rng(2).normal(0, 0.1, 16000).astype(np.float32), 16000)
    out = tmp_path / "emb.zarr"
    result = CliRunner().invoke(main, ["embed", scene_student, recording, str(short), "--out", str(out),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    group = zarr.open_group(str(out), mode="r")
    assert group["scene"].shape == (2, 40) and list(group["offsets"][:]) == [0, 8, 9]
    assert group["embeddings"].shape == (9, 40) and group.attrs["paths"] == [recording, str(short)]
    assert np.allclose(group["timestamps"][:], [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.15, 0.5])

    onnx_path = export_student(ExportConfig(scene_student, str(tmp_path / "student.onnx"))).path
    as_npz = tmp_path / "emb.npz"
    result = CliRunner().invoke(main, ["embed", onnx_path, recording, str(short), "--out", str(as_npz)])
    assert result.exit_code == 0, result.output
    exported = np.load(as_npz)
    assert list(exported["paths"]) == [recording, str(short)]
    assert np.allclose(exported["embeddings"], group["embeddings"][:], atol=1e-4)
    assert np.allclose(exported["timestamps"], group["timestamps"][:])


def _graph(nodes, initializers):
    from onnx import TensorProto, helper

    inits = [helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0]) for name in initializers]
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)


def test_the_classifier_input_is_found_in_float_int8_and_folded_graphs():
    from onnx import helper

    from kd.embed.onnx_graph import classifier_input

    conv = _graph([helper.make_node("Relu", ["x"], ["features"]),
                   helper.make_node("Conv", ["features", "student.feed_forward.0.weight"], ["logits"])],
                  ["student.feed_forward.0.weight"])
    assert classifier_input(conv, ("feed_forward.0", "feed_forward.1")) == "features"
    folded = _graph([helper.make_node("Relu", ["x"], ["frames"]),  # the linear's weight became an unnamed constant
                     helper.make_node("MatMul", ["frames", "val_7"], ["product"]),
                     helper.make_node("Add", ["product", "student.strong_head.bias"], ["logits"])],
                    ["val_7", "student.strong_head.bias"])
    assert classifier_input(folded, ("strong_head",)) == "frames"
    int8 = _graph([helper.make_node("Relu", ["x"], ["pooled"]),
                   helper.make_node("QuantizeLinear", ["pooled", "s", "z"], ["pooled_q"]),
                   helper.make_node("DequantizeLinear", ["pooled_q", "s", "z"], ["pooled_dq"]),
                   helper.make_node("DequantizeLinear", ["classifier.5.weight_quantized", "s", "z"], ["w"]),
                   helper.make_node("Gemm", ["pooled_dq", "w"], ["logits"])],
                  ["classifier.5.weight_quantized", "s", "z", "classifier.2.weight"])
    assert classifier_input(int8, ("classifier.5",)) == "pooled"  # the float tensor before quantisation
    with pytest.raises(KdError, match="gives no embedding"):
        classifier_input(conv, ("head",))
