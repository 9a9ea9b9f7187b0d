"""The shared bottom layer: registry, builder, checkpoint loading, Kaldi mel banks, the EfficientAT/PaSST frontend."""
import math

import pytest
import torch
from torch import nn

from kd_errors import KdError
from layers import (
    CheckpointError,
    MelSTFT,
    Registry,
    UnknownModelError,
    build_model,
    kaldi_mel_banks,
    load_checkpoint,
    load_state_dict_strict,
    mask_along_axis,
)


# --- registry ---------------------------------------------------------------------------------------------------
def test_registry_registers_by_function_name_and_lists_sorted():
    reg = Registry("widget")

    @reg.register(cfg={"sample_rate": 32000})
    def widget_b(size: int = 1):
        return ("b", size)

    @reg.register
    def widget_a():
        return "a"

    assert reg.names() == ["widget_a", "widget_b"]
    assert reg.names("*_b") == ["widget_b"]
    assert reg.get("widget_b").fn(size=3) == ("b", 3)
    assert reg.get("widget_b").cfg["sample_rate"] == 32000
    assert "widget_a" in reg and len(reg) == 2


def test_registry_unknown_name_suggests_close_matches():
    reg = Registry("student")
    reg.register(lambda: None)  # registered under "<lambda>"

    @reg.register
    def mn10():
        return None

    with pytest.raises(UnknownModelError, match=r"unknown student 'mn01'.*mn10"):
        reg.get("mn01")


def test_registry_refuses_duplicate_names():
    reg = Registry("teacher")

    def dup():
        return None

    reg.register(dup)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(dup)


def test_user_errors_are_kd_errors_not_value_errors():
    for error in (CheckpointError, UnknownModelError):
        assert issubclass(error, KdError) and not issubclass(error, ValueError)


# --- checkpoints ------------------------------------------------------------------------------------------------
def _tiny_net():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_checkpoint_round_trip_and_wrapper_unwrapping(tmp_path):
    net = _tiny_net()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    other = _tiny_net()
    load_state_dict_strict(other, load_checkpoint(path))
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_mismatch_names_keys_and_shapes():
    sd = _tiny_net().state_dict()
    sd["extra.weight"] = torch.zeros(5)
    del sd["0.bias"]
    sd["2.weight"] = torch.zeros(7, 3)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(_tiny_net(), sd, source="my.pt")
    msg = str(err.value)
    assert "my.pt does not match" in msg
    assert "1 missing key(s): 0.bias (3,)" in msg
    assert "1 unexpected key(s): extra.weight (5,)" in msg
    assert "2.weight (model (2, 3), checkpoint (7, 3))" in msg
    assert "\n" not in msg


def test_checkpoint_filter_fn_is_applied_before_matching():
    sd = {f"module.{k}": v for k, v in _tiny_net().state_dict().items()}
    net = _tiny_net()
    load_state_dict_strict(net, sd, filter_fn=lambda s, m: {k.removeprefix("module."): v for k, v in s.items()})


class _NotATensor:
    pass


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _tiny_net().state_dict(), "obj": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_checkpoint_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(path)


# --- builder ----------------------------------------------------------------------------------------------------
class _Tagger(nn.Module):
    """A trunk and a head sized by ``num_classes``, optionally a second head (as PaSST's frame head)."""

    classifier_names = ("head", "extra_head")

    def __init__(self, num_classes: int = 3, extra_head: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 5)
        self.head = nn.Linear(5, num_classes)
        self.extra_head = nn.Linear(5, num_classes) if extra_head else None


def _taggers() -> Registry:
    reg = Registry("tagger")

    def strip_module(sd, model):
        return {k.removeprefix("module."): v for k, v in sd.items()}

    @reg.register(cfg={"sample_rate": 16000}, checkpoint_filter=strip_module)
    def tagger(**kwargs):
        return _Tagger(**kwargs)

    @reg.register
    def unfiltered(**kwargs):
        return _Tagger(**kwargs)

    return reg


def test_build_model_loads_through_the_filter_of_the_entry(tmp_path):
    entry = _taggers().get("tagger")
    source = build_model(entry, num_classes=2)
    assert isinstance(source, _Tagger) and source.cfg == {"sample_rate": 16000}
    path = tmp_path / "tagger.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    for checkpoint in (path, source.state_dict()):
        loaded = build_model(entry, checkpoint, num_classes=2)
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())


def test_build_model_refuses_a_checkpoint_without_a_filter():
    entry = _taggers().get("unfiltered")
    assert build_model(entry).head.out_features == 3
    with pytest.raises(CheckpointError, match="unfiltered was registered without a checkpoint_filter"):
        build_model(entry, _Tagger().state_dict())
    with pytest.raises(ValueError, match="fresh_classifiers"):
        build_model(entry, fresh_classifiers="always")


def test_fresh_classifiers_policy():
    entry = _taggers().get("tagger")
    source = _Tagger(num_classes=3).state_dict()
    with pytest.raises(CheckpointError, match=r"head\.weight \(model \(4, 5\), checkpoint \(3, 5\)\)"):
        build_model(entry, source, num_classes=4)
    torch.manual_seed(0)
    fresh = _Tagger(num_classes=4)
    torch.manual_seed(0)
    tuned = build_model(entry, source, fresh_classifiers="resized", num_classes=4)
    assert torch.equal(tuned.trunk.weight, source["trunk.weight"]) and torch.equal(tuned.head.weight, fresh.head.weight)

    # a classifier layer the checkpoint lacks: an error unless the policy allows missing ones
    with pytest.raises(CheckpointError, match=r"missing key\(s\): extra_head\.weight"):
        build_model(entry, source, fresh_classifiers="resized", extra_head=True)
    extended = build_model(entry, source, fresh_classifiers="resized_or_missing", extra_head=True)
    assert torch.equal(extended.head.weight, source["head.weight"]) and extended.extra_head is not None
    # ... and one the model does not build is dropped, under that policy only
    both = _Tagger(extra_head=True).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): extra_head\.weight"):
        build_model(entry, both, fresh_classifiers="resized")
    assert build_model(entry, both, fresh_classifiers="resized_or_missing").extra_head is None
    # the trunk must match whatever the policy
    del source["trunk.bias"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\): trunk\.bias"):
        build_model(entry, source, fresh_classifiers="resized_or_missing")


# --- mel banks --------------------------------------------------------------------------------------------------
# Golden values from Kaldi's mel-bank definition as implemented by torchaudio.compliance.kaldi.get_mel_banks
# (n_mels=128, n_fft=1024, sr=32000, fmin=0, fmax=15000: the EfficientAT/PaSST eval frontend).
# Both compute the filters in float32, whose log differs by a few ulp from one CPU to another (torch picks
# its vectorised log by instruction set), hence a relative tolerance on the sums rather than an exact match.
@pytest.mark.parametrize(
    "row, first, last, total",
    [(0, 1, 1, 0.188595250248909), (1, 1, 1, 0.8114047646522522), (64, 83, 87, 2.6713342666625977),
     (127, 457, 480, 11.83276081085205)],
)
def test_kaldi_mel_banks_match_kaldi(row, first, last, total):
    banks = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert banks.shape == (128, 513)
    nonzero = banks[row].nonzero().flatten()
    assert (nonzero.min().item(), nonzero.max().item()) == (first, last)
    assert banks[row].sum().item() == pytest.approx(total, rel=1e-5)
    assert torch.all(banks[:, -1] == 0)


def test_kaldi_mel_banks_negative_fmax_counts_from_nyquist():
    assert torch.equal(kaldi_mel_banks(128, 512, 16000, 20.0, 0.0), kaldi_mel_banks(128, 512, 16000, 20.0, 8000.0))
    assert kaldi_mel_banks(128, 512, 16000, 20.0, 0.0)[127].sum().item() == pytest.approx(5.257264614105225, rel=1e-5)
    with pytest.raises(ValueError, match="mel range"):
        kaldi_mel_banks(64, 512, 16000, 9000.0, 0.0)


# --- frontend ---------------------------------------------------------------------------------------------------
def test_mel_frontend_shape_and_frame_rate():
    fe = MelSTFT().eval()
    x = torch.randn(2, 32000 * 2)
    y = fe(x)
    assert y.shape == (2, 1, 128, fe.num_frames(x.shape[-1]))
    assert fe.num_frames(320000) == 1000 and fe.frames_per_second == 100


def test_mel_frontend_puts_a_tone_in_the_right_band():
    fe = MelSTFT().eval()
    t = torch.arange(32000) / 32000
    spec = fe(torch.sin(2 * math.pi * 1000.0 * t)[None])[0, 0]
    peak_bin = spec.mean(dim=1).argmax().item()
    centres = (kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0) * torch.arange(513)).sum(1) / kaldi_mel_banks(
        128, 1024, 32000, 0.0, 15000.0
    ).sum(1) * 32000 / 1024
    assert abs(centres[peak_bin].item() - 1000.0) < 60.0


def test_mel_frontend_is_deterministic_in_eval_and_augments_in_training():
    fe = MelSTFT(freqm=20, timem=20)
    x = torch.randn(4, 16000)
    fe.eval()
    assert torch.equal(fe(x), fe(x))
    fe.train()
    torch.manual_seed(0)
    a = fe(x)
    torch.manual_seed(1)
    assert not torch.equal(a, fe(x))


def test_masks_are_drawn_per_example_and_bounded():
    torch.manual_seed(0)
    x = torch.ones(64, 1, 40, 30)
    y = mask_along_axis(x, max_width=10, axis=2)
    zero_rows = (y[:, 0, :, 0] == 0).sum(dim=1)
    assert zero_rows.max() <= 10
    assert len(set(zero_rows.tolist())) > 1
    assert torch.equal(mask_along_axis(x, 0, axis=2), x)


def test_channel_se_export_form_computes_the_same_function_with_convolutions():
    from layers.blocks import SqueezeExcitation

    torch.manual_seed(0)
    se = SqueezeExcitation(24, 8).eval()
    export = se.exportable()
    assert not any(isinstance(m, torch.nn.Linear) for m in export.modules())
    x = torch.randn(3, 24, 7, 11)
    with torch.no_grad():
        torch.testing.assert_close(export(x), se(x), atol=1e-6, rtol=1e-6)
    frequency_se = SqueezeExcitation(7, 8, axis="f")
    assert frequency_se.exportable() is frequency_se  # exports as it is


@pytest.mark.parametrize(("n_fft", "win_length", "hop", "bins"), [(1024, 800, 320, (1, 481)), (4096, 3072, 500, (1, 1984)),
                                                                  (4096, 4096, 1024, (0, 2049)), (400, 400, 160, (0, 201)),
                                                                  (510, 300, 100, (7, 200))])
def test_squared_stft_sums_to_the_power_of_torch_stft(n_fft, win_length, hop, bins):
    """Any FFT size (odd factors, no factors), two stages or three (4096), window shorter than the FFT, hop a
    multiple of the block or not, a band of bins, any length."""
    from layers.dft import SquaredSTFT

    window = torch.hann_window(win_length, periodic=False)
    stft = SquaredSTFT(window, n_fft, hop)
    real, imaginary = stft.rows(torch.arange(*bins))
    for length in (n_fft // 2 + 1, 7 * hop + 3, 32000):
        x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
        spec = torch.stft(x, n_fft, hop_length=hop, win_length=win_length, window=window, center=True,
                          return_complex=True)
        expected = spec.abs().square()[:, bins[0]:bins[1]]
        squares = stft(x)
        got = squares[:, real] + squares[:, imaginary]
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
