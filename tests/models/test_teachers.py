"""Teachers: every registered model builds, runs, round-trips and loads its official key layout strictly."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kd_errors import KdError
from layers import CheckpointError
from teachers import (
    TEACHERS,
    TeacherInputError,
    TeacherOutput,
    create_teacher,
    list_teachers,
    teacher_cfg,
)
from teachers.passt import PaSST

DATA = Path(__file__).parents[1] / "data"
ALL = list_teachers()
TINY = [n for n in ALL if "tiny" in n]
CNN = [n for n in ALL if TEACHERS.get(n).fn.__module__ == "teachers.cnn"]  # small as registered
FULL = [n for n in ALL if n not in TINY and n not in CNN]  # full-size transformers


def _small(name: str) -> dict:
    """Overrides that keep a full-size architecture's layout but make it cheap to run on CPU."""
    return {"depth": 1} if name in FULL else {}


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_teacher(name, **{**_small(name), **kwargs}).eval()


def test_every_release_is_registered():
    passt = {
        "passt_s_swa_p16_128_ap476", "passt_s_swa_p16_128_ap4761", "passt_s_p16_128_ap472", "passt_s_kd_p16_128_ap486",
        "passt_l_kd_p16_128_ap47", "passt_s_p16_s12_128_ap470", "passt_s_swa_p16_s12_128_ap473",
        "passt_s_p16_s14_128_ap469", "passt_s_swa_p16_s14_128_ap471", "passt_s_p16_s16_128_ap468",
        "passt_s_swa_p16_s16_128_ap473", "passt_b_f128_p16_s16_ap_459", "passt_u600_f128_p16_s16_ap_460",
        "passt_s_swa_f128_stfthop100_p16_s10_ap473", "passt_s_swa_f128_stfthop160_p16_s10_ap473",
        "passt_s_f128_20sec_p16_s10_ap474_swa", "passt_s_f128_30sec_p16_s10_ap473_swa",
    }
    ast = {f"ast_audioset_{s}" for s in ("10_10_0_4593", "10_10_0_4495", "10_10_0_4483", "10_10_0_4475",
                                          "12_12_0_4467", "14_14_0_4431", "16_16_0_4422")}
    assert passt | ast | {"passt_tiny", "passt_tiny_frame", "passt_s_frame", "ast_tiny", "cp_resnet"} == set(ALL)
    assert list_teachers("ast_*") == sorted(ast | {"ast_tiny"})
    assert teacher_cfg("passt_s_swa_p16_128_ap476")["file"] == "passt-s-f128-p16-s10-ap.476-swa.pt"
    assert teacher_cfg("ast_audioset_10_10_0_4593")["file"] == "audioset_10_10_0.4593.pth"


@pytest.mark.parametrize("name", ALL)
def test_classifier_names_and_checkpoint_filter_are_declared(name):
    entry = TEACHERS.get(name)
    assert entry.checkpoint_filter is sys.modules[entry.fn.__module__].checkpoint_filter_fn
    with torch.device("meta"):
        model = create_teacher(name, num_classes=11, **_small(name))
        other = create_teacher(name, num_classes=12, **_small(name)).state_dict()
    state = model.state_dict()
    resized = {k for k, v in state.items() if v.shape != other[k].shape}
    prefixes = tuple(f"{layer}." for layer in model.classifier_names)
    assert resized and all(k.startswith(prefixes) for k in resized), resized
    for layer in model.classifier_names:
        if any(k.startswith(f"{layer}.") for k in state):
            assert any(k.startswith(f"{layer}.") for k in resized), f"{layer} is not sized by num_classes"
        else:  # an optional head this variant does not build (PaSST's frame_head)
            assert getattr(model, layer) is None, f"{layer} names no layer of {name}"


@pytest.mark.parametrize("name", FULL)
def test_full_size_builds_with_declared_contract(name):
    with torch.device("meta"):
        model = create_teacher(name)
    cfg = teacher_cfg(name)
    assert model.sample_rate == cfg["sample_rate"]
    assert model.num_classes == cfg["num_classes"] == model.head[1].out_features
    assert (model.frames_per_second is not None) == ("frame" in name)
    json.dumps(model.frontend_config())
    assert model.frontend_config()["sample_rate"] == model.sample_rate
    params = sum(p.numel() for p in model.parameters())
    assert 50e6 < params < 90e6


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes_and_rates(name):
    model = _build(name)
    batch = 1 if name in FULL else 2
    seconds = min(model.clip_seconds, 1.5)
    wave = torch.randn(batch, int(seconds * model.sample_rate)) * 0.1
    with torch.inference_mode():
        out = model(wave)
    assert isinstance(out, TeacherOutput)
    assert out.clip.shape == (batch, model.num_classes) and torch.isfinite(out.clip).all()
    if model.frames_per_second is None:
        assert out.frame is None
    else:
        assert out.frame.shape == (batch, model.num_output_frames(wave.shape[-1]), model.num_classes)
        # one frame per time patch: about frames_per_second frames per second of audio
        assert abs(out.frame.shape[1] - seconds * model.frames_per_second) <= 2


@pytest.mark.parametrize("name", TINY)
def test_tiny_teachers_train_from_scratch(name):
    model = _build(name).train()
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 5e6
    wave = torch.randn(2, model.context_samples) * 0.1
    out = model(wave)
    loss = out.clip.square().mean() + (out.frame.square().mean() if out.frame is not None else 0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name, tmp_path):
    model = _build(name)
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": model.state_dict(), "teacher": name}, path)
    torch.manual_seed(1)
    loaded = create_teacher(name, checkpoint=path, **_small(name)).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    if name not in FULL:
        wave = torch.randn(2, model.context_samples)
        with torch.inference_mode():
            assert torch.equal(model(wave).clip, loaded(wave).clip)


@pytest.mark.parametrize("name", ALL)
def test_renamed_keys_are_rejected_naming_them(name):
    model = _build(name)
    sd = model.state_dict()
    key = "norm.weight" if "norm.weight" in sd else next(k for k, v in sd.items() if k.endswith("weight") and v.dim() == 1)
    renamed = key.replace("weight", "renamed_weight")
    sd[renamed] = sd.pop(key)
    with pytest.raises(CheckpointError) as err:
        create_teacher(name, checkpoint=sd, **_small(name))
    message = str(err.value)
    assert "missing" in message and f"{key} {tuple(sd[renamed].shape)}" in message
    assert "unexpected" in message and renamed in message


def _random_state_dict(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) * 0.02 for k, shape in layout.items()}


@pytest.mark.parametrize(
    "name", ["passt_s_swa_p16_128_ap476", "passt_s_p16_s16_128_ap468", "passt_l_kd_p16_128_ap47"]
)
def test_passt_official_layout_loads_strictly(name, tmp_path):
    layout = json.loads((DATA / "passt_release_layouts.json").read_text())[name]
    sd = _random_state_dict(layout)
    path = tmp_path / teacher_cfg(name)["file"]
    torch.save(sd, path)
    model = create_teacher(name, checkpoint=path)
    assert set(model.state_dict()) == set(layout)
    assert torch.equal(model.time_new_pos_embed, sd["time_new_pos_embed"])
    assert torch.equal(model.head[1].weight, sd["head.1.weight"])


def _ast_official_layout(stride: int, classes: int = 527, depth: int = 12) -> dict[str, list[int]]:
    """Key names and shapes of an AST AudioSet release (DataParallel prefix, ViT under ``v``)."""
    grid = ((128 - 16) // stride + 1) * ((1024 - 16) // stride + 1)
    layout = {
        "module.v.cls_token": [1, 1, 768], "module.v.dist_token": [1, 1, 768],
        "module.v.pos_embed": [1, grid + 2, 768],
        "module.v.patch_embed.proj.weight": [768, 1, 16, 16], "module.v.patch_embed.proj.bias": [768],
    }
    for i in range(depth):
        b = f"module.v.blocks.{i}."
        layout |= {
            b + "norm1.weight": [768], b + "norm1.bias": [768],
            b + "attn.qkv.weight": [2304, 768], b + "attn.qkv.bias": [2304],
            b + "attn.proj.weight": [768, 768], b + "attn.proj.bias": [768],
            b + "norm2.weight": [768], b + "norm2.bias": [768],
            b + "mlp.fc1.weight": [3072, 768], b + "mlp.fc1.bias": [3072],
            b + "mlp.fc2.weight": [768, 3072], b + "mlp.fc2.bias": [768],
        }
    layout |= {
        "module.v.norm.weight": [768], "module.v.norm.bias": [768],
        "module.v.head.weight": [1000, 768], "module.v.head.bias": [1000],
        "module.v.head_dist.weight": [1000, 768], "module.v.head_dist.bias": [1000],
        "module.mlp_head.0.weight": [768], "module.mlp_head.0.bias": [768],
        "module.mlp_head.1.weight": [classes, 768], "module.mlp_head.1.bias": [classes],
    }
    return layout


@pytest.mark.parametrize("name,stride", [("ast_audioset_10_10_0_4593", 10), ("ast_audioset_16_16_0_4422", 16)])
def test_ast_official_layout_loads_strictly(name, stride, tmp_path):
    sd = _random_state_dict(_ast_official_layout(stride))
    path = tmp_path / teacher_cfg(name)["file"]
    torch.save(sd, path)
    model = create_teacher(name, checkpoint=path)
    assert torch.equal(model.pos_embed, sd["module.v.pos_embed"])
    assert torch.equal(model.head[1].weight, sd["module.mlp_head.1.weight"])
    assert torch.equal(model.blocks[11].mlp.fc2.bias, sd["module.v.blocks.11.mlp.fc2.bias"])
    assert not any(k.startswith("head_dist") for k in model.state_dict())


def _grid_coded_pos_embed(freq: int, time: int, dim: int = 4) -> torch.Tensor:
    """pos_embed whose patch entries hold (f, t) so slicing and layout can be read back."""
    f, t = torch.meshgrid(torch.arange(freq), torch.arange(time), indexing="ij")
    patches = torch.stack([f, t] + [torch.zeros_like(f)] * (dim - 2), dim=-1).reshape(1, freq * time, dim)
    return torch.cat([torch.full((1, 2, dim), -1.0), patches.float()], dim=1)


def test_ast_pos_embed_is_cut_from_the_middle_for_shorter_inputs():
    tiny = {"embed_dim": 4, "depth": 1, "num_heads": 1}
    short = create_teacher("ast_tiny", clip_seconds=5.12, **tiny)  # 512 frames -> 12 x 50 patches
    sd = short.state_dict()
    sd["pos_embed"] = _grid_coded_pos_embed(12, 101)
    short.load_state_dict(create_checkpoint_filtered(sd, short))
    grid = short.pos_embed[0, 2:, :2].reshape(12, 50, 2)
    assert torch.equal(grid[:, 0, 1], torch.full((12,), 50.0 - 25))  # AST: start at 101 // 2 - 50 // 2
    assert torch.equal(grid[:, :, 1], (torch.arange(50) + 25).float().expand(12, 50))
    assert torch.equal(grid[:, 0, 0], torch.arange(12).float())
    longer = create_teacher("ast_tiny", clip_seconds=20.48, **tiny)  # 2048 frames -> 12 x 204 patches
    sd = longer.state_dict()
    sd["pos_embed"] = _grid_coded_pos_embed(12, 101)
    longer.load_state_dict(create_checkpoint_filtered(sd, longer))
    grid = longer.pos_embed[0, 2:, :2].reshape(12, 204, 2)
    assert grid[0, 0, 1] == 0 and grid[0, -1, 1] == 100  # bilinear stretch keeps both ends
    assert torch.all(grid[:, 1:, 1] >= grid[:, :-1, 1])


def create_checkpoint_filtered(sd: dict, model: nn.Module) -> dict:
    from teachers.ast import checkpoint_filter_fn

    return checkpoint_filter_fn({f"module.{k}" if not k.startswith("head") else k: v for k, v in sd.items()}, model)


def test_new_num_classes_reinitialises_only_the_heads(tmp_path):
    source = _build("passt_tiny")
    path = tmp_path / "passt_tiny.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match="head.1.weight"):
        create_teacher("passt_tiny", checkpoint=path, num_classes=4, new_heads=False)
    tuned = create_teacher("passt_tiny", checkpoint=path, num_classes=4)
    assert tuned.head[1].out_features == 4 and tuned.head_dist.out_features == 4
    for key, value in source.state_dict().items():
        if not key.startswith(("head.", "head_dist.")):
            assert torch.equal(value, tuned.state_dict()[key]), key


def test_frame_head_on_a_clip_checkpoint_needs_new_heads(tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(_build("passt_tiny", clip_seconds=4.0).state_dict(), path)
    with pytest.raises(CheckpointError, match="frame_head.1.weight"):
        create_teacher("passt_tiny_frame", checkpoint=path)
    model = create_teacher("passt_tiny_frame", checkpoint=path, new_heads=True)
    assert model.frame_head is not None
    frame_path = tmp_path / "frame.pt"
    torch.save(model.state_dict(), frame_path)  # and back: new_heads drops the frame head a clip model lacks
    with pytest.raises(CheckpointError, match="unexpected key"):
        create_teacher("passt_tiny", checkpoint=frame_path, clip_seconds=4.0)
    assert create_teacher("passt_tiny", checkpoint=frame_path, clip_seconds=4.0, new_heads=True).frame_head is None


def _reference_attention_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A pre-norm ViT block written out with explicit softmax attention (as the reference code does)."""
    h = block.norm1(x)
    b, n, d = h.shape
    heads = block.attn.num_heads
    qkv = nn.functional.linear(h, block.attn.qkv.weight, block.attn.qkv.bias)
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
    x = x + nn.functional.linear((attn @ v).transpose(1, 2).reshape(b, n, d), block.attn.proj.weight,
                                 block.attn.proj.bias)
    h = block.norm2(x)
    return x + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(h)))


def _reference_passt(model: PaSST, spec: torch.Tensor) -> torch.Tensor:
    """PaSST's documented forward: grid + time_pos[:T] + freq_pos, cls/dist + new_pos_embed, mean of 2 tokens."""
    x = nn.functional.conv2d(spec, model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                             stride=model.patch_embed.stride)
    x = x + model.time_new_pos_embed[..., : x.shape[-1]]
    x = x + model.freq_new_pos_embed
    x = x.flatten(2).transpose(1, 2)
    cls = model.cls_token.expand(x.shape[0], -1, -1) + model.new_pos_embed[:, :1]
    dist = model.dist_token.expand(x.shape[0], -1, -1) + model.new_pos_embed[:, 1:]
    x = torch.cat([cls, dist, x], dim=1)
    for block in model.blocks:
        x = _reference_attention_block(block, x)
    x = model.norm(x)
    return model.head((x[:, 0] + x[:, 1]) / 2)


def test_passt_matches_the_documented_forward():
    torch.manual_seed(0)
    model = PaSST(num_classes=7, embed_dim=64, depth=2, num_heads=4).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    spec = torch.randn(2, 1, 128, 420)  # shorter than the 99 time positions: the first 40 are used
    with torch.inference_mode():
        ours = model.forward_spectrogram(spec).clip
        expected = _reference_passt(model, spec)
        assert (ours - expected).abs().max() <= 1e-4
        model.head_dist.weight.add_(1.0)  # the distillation head is not part of PaSST's logits
        assert torch.equal(model.forward_spectrogram(spec).clip, ours)


def test_ast_matches_the_documented_forward():
    torch.manual_seed(0)
    model = create_teacher("ast_tiny", embed_dim=64, num_heads=4, depth=2, num_classes=5).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    spec = torch.randn(2, 1, 128, 100)
    with torch.inference_mode():
        x = nn.functional.conv2d(spec, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=(10, 10))
        x = x.flatten(2).transpose(1, 2)  # frequency-major patch order
        x = torch.cat([model.cls_token.expand(2, -1, -1), model.dist_token.expand(2, -1, -1), x], dim=1)
        x = x + model.pos_embed
        for block in model.blocks:
            x = _reference_attention_block(block, x)
        x = model.norm(x)
        expected = model.head((x[:, 0] + x[:, 1]) / 2)
        assert (model.forward_spectrogram(spec).clip - expected).abs().max() <= 1e-4


def _tokens_seen(model: nn.Module, spec: torch.Tensor) -> int:
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    model.forward_spectrogram(spec)
    handle.remove()
    return seen[0]


def test_passt_patchout_only_in_training():
    model = _build("passt_tiny", s_patchout_t=3, s_patchout_f=2, u_patchout=5)
    spec = torch.randn(2, 1, 128, 100)  # 12 x 9 patches
    assert _tokens_seen(model.eval(), spec) == 2 + 12 * 9
    assert _tokens_seen(model.train(), spec) == 2 + 10 * 6 - 5
    with pytest.raises(TeacherInputError, match="s_patchout_t=30"):
        _build("passt_tiny", s_patchout_t=30).train().forward_spectrogram(spec)
    with pytest.raises(ValueError, match="frame-wise"):
        create_teacher("passt_tiny_frame", s_patchout_t=2)


def test_passt_refuses_spectrograms_longer_than_its_positions():
    model = _build("passt_tiny")
    with pytest.raises(TeacherInputError, match="time positions"):
        model.forward_spectrogram(torch.randn(1, 1, 128, 300))
    with pytest.raises(TeacherInputError, match=r"\[B, N\]"):
        model(torch.randn(16000))
    assert issubclass(TeacherInputError, KdError) and not issubclass(TeacherInputError, ValueError)


def test_long_clip_input_is_windowed_not_truncated():
    model = _build("passt_tiny")
    wave = torch.randn(1, int(3.3 * model.sample_rate)) * 0.1
    changed = wave.clone()
    changed[:, -1000:] = 0.5
    with torch.inference_mode():
        out, out_changed = model(wave), model(changed)
    assert out.clip.shape == (1, 10)
    assert not torch.allclose(out.clip, out_changed.clip)


def test_long_frame_input_keeps_a_uniform_frame_grid():
    model = _build("passt_tiny_frame")
    assert model.frames_per_second == 10.0
    wave = torch.randn(1, int(9.5 * model.sample_rate)) * 0.1
    with torch.inference_mode():
        long = model(wave)
        hop = model.frame_window_hop_samples()
        first = model(wave[:, : model.context_samples]).frame
        second = model(wave[:, hop : hop + model.context_samples]).frame
    assert long.frame.shape[1] == model.num_output_frames(wave.shape[-1]) == 94
    per_window = first.shape[1]
    assert hop == per_window * 10 * 320  # windows start exactly one frame grid apart
    assert torch.allclose(long.frame[:, :per_window], first, atol=1e-5)
    assert torch.allclose(long.frame[:, per_window : 2 * per_window], second, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", TINY)
def test_teachers_run_on_cuda(name):
    model = _build(name).cuda()
    wave = torch.randn(2, int(model.clip_seconds * model.sample_rate), device="cuda")
    with torch.inference_mode():
        cpu_out = model.cpu()(wave.cpu()).clip
        gpu_out = model.cuda()(wave).clip
    assert gpu_out.device.type == "cuda"
    assert torch.allclose(gpu_out.cpu(), cpu_out, atol=1e-3)
    assert math.isfinite(float(gpu_out.abs().max()))
