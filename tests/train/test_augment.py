"""Augmentations keep audio and targets consistent."""
import numpy as np
import pytest
import soundfile as sf
import torch

from kd.train.augment import DeviceImpulseResponses, freq_mixstyle, mix, mixup_params, random_gain, time_roll
from kd_errors import KdError


def test_mixup_mixes_inputs_labels_and_teacher_targets_alike():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 4, 5)
    y = torch.eye(8)
    t = torch.rand(8, 8)
    params = mixup_params(8, alpha=0.3)
    assert torch.all(params.lam >= 0.5) and torch.all(params.lam <= 1.0)
    xm, ym, tm = mix(x, params), mix(y, params), mix(t, params)
    for i in range(8):
        lam, j = params.lam[i].item(), params.perm[i].item()
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[j])
        assert torch.allclose(tm[i], lam * t[i] + (1 - lam) * t[j])
        assert ym[i, i].item() == pytest.approx(lam + (1 - lam) * (i == j))


def test_freq_mixstyle_keeps_shape_and_only_changes_band_statistics():
    torch.manual_seed(0)
    spec = torch.randn(6, 1, 8, 50) * torch.linspace(0.5, 3, 8).view(1, 1, 8, 1) + torch.arange(6.0).view(6, 1, 1, 1)
    out = freq_mixstyle(spec, p=1.0)
    assert out.shape == spec.shape and not torch.allclose(out, spec)
    # the temporal pattern inside each band is preserved up to an affine map
    corr = torch.corrcoef(torch.stack([spec[0, 0, 3], out[0, 0, 3]]))[0, 1]
    assert corr.item() == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(freq_mixstyle(spec, p=0.0), spec)


def test_time_roll_keeps_frame_targets_aligned():
    torch.manual_seed(0)
    sr, fps = 1000, 10
    wave = torch.zeros(4, sr)
    targets = torch.zeros(4, 10, 1)
    wave[:, 200:300] = 1.0  # an event in frame 2
    targets[:, 2, 0] = 1.0
    rolled, (rolled_targets,) = time_roll(wave, 0.5, sr, [targets], fps)
    for w, t in zip(rolled, rolled_targets):
        frame_with_energy = int(w.nonzero()[0].item() // (sr // fps))
        assert t[frame_with_energy, 0] == 1.0 and t.sum() == 1.0


def test_random_gain_is_bounded():
    g = random_gain(torch.ones(100, 10), max_db=6.0)[:, 0]
    assert g.min() >= 10 ** (-6 / 20) - 1e-6 and g.max() <= 10 ** (6 / 20) + 1e-6 and g.std() > 0


def _write_irs(folder, count=3, sr=44100):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        ir = np.zeros(2000, dtype=np.float32)
        ir[0] = 1.0
        ir[1:] = rng.standard_normal(1999).astype(np.float32) * np.exp(-np.arange(1999) / (100 + 100 * i)) * 0.3
        sf.write(folder / f"dev{i}.wav", ir, sr)
    (folder / "notes.txt").write_text("not audio")


def test_device_impulse_responses_apply_only_to_chosen_devices(tmp_path):
    _write_irs(tmp_path / "irs")
    dirs = DeviceImpulseResponses(tmp_path / "irs", sample_rate=32000, p=1.0, devices=["a"])
    assert len(dirs) == 3
    torch.manual_seed(0)
    wave = torch.randn(3, 32000)
    out = dirs(wave, devices=["a", "b", "s1"])
    assert not torch.allclose(out[0], wave[0])
    assert torch.equal(out[1:], wave[1:])
    assert out[0].square().mean().sqrt().item() == pytest.approx(wave[0].square().mean().sqrt().item(), rel=1e-3)


def test_device_impulse_responses_refuse_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdError, match="no impulse responses"):
        DeviceImpulseResponses(tmp_path / "empty", 32000)
