"""Teacher frontends against golden vectors derived from torchaudio's Kaldi compliance code, and the resampler."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from layers import MelSTFT
from layers.fbank import KaldiFbank
from layers.resample import resample
from teachers import TeacherInputError
from teachers.ast import AUDIOSET_MEAN, AUDIOSET_STD, ASTFrontend

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "teacher_frontends.json").read_text())


def _signal(sample_rate: int, seconds: float) -> torch.Tensor:
    """The deterministic test signal the golden vectors were computed on (two tones and integer-hash noise)."""
    n = torch.arange(int(sample_rate * seconds), dtype=torch.float64)
    noise = ((n * 7919) % 1000) / 500.0 - 1.0
    x = 0.5 * torch.sin(2 * math.pi * 440 * n / sample_rate)
    x = x + 0.25 * torch.sin(2 * math.pi * 3000 * n / sample_rate + 0.3) + 0.05 * noise
    return x.float()[None]


def test_kaldi_fbank_matches_kaldi_golden_values():
    golden = GOLDEN["kaldi_fbank_16k"]
    wave = _signal(16000, 1.0)
    fbank = KaldiFbank()(wave - wave.mean())[0]
    assert list(fbank.shape) == golden["shape"] == [98, 128]
    # Log filter-bank energies in float32: a few ulp of the mel weights (see test_layers) move them by up to 2e-4.
    assert (fbank[golden["frames"]] - torch.tensor(golden["values"])).abs().max() <= 5e-4
    assert abs(fbank.double().mean().item() - golden["mean"]) <= 1e-5


def test_passt_mel_frontend_matches_golden_values():
    golden = GOLDEN["passt_mel_32k"]
    mel = MelSTFT().eval()(_signal(32000, 1.0))[0, 0]
    assert list(mel.shape) == golden["shape"]
    assert (mel[:, golden["frames"]].t() - torch.tensor(golden["values"])).abs().max() <= 1e-4
    assert abs(mel.double().mean().item() - golden["mean"]) <= 1e-5


def test_ast_frontend_pads_then_normalises_with_the_audioset_statistics():
    assert (AUDIOSET_MEAN, AUDIOSET_STD) == (-4.2677393, 4.5689974)
    frontend = ASTFrontend(target_frames=128).eval()
    wave = _signal(16000, 1.0) + 0.3  # a DC offset the frontend removes first
    spec = frontend(wave)
    assert spec.shape == (1, 1, 128, 128)
    golden = torch.tensor(GOLDEN["kaldi_fbank_16k"]["values"])
    expected = (golden - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    assert (spec[0, 0][:, GOLDEN["kaldi_fbank_16k"]["frames"]].t() - expected).abs().max() <= 1e-4
    padding = spec[0, 0, :, 98:]
    assert torch.allclose(padding, torch.full_like(padding, -AUDIOSET_MEAN / (2 * AUDIOSET_STD)))


def test_ast_frontend_masks_only_in_training_and_refuses_long_input():
    frontend = ASTFrontend(target_frames=100, freqm=48, timem=40)
    wave = _signal(16000, 1.0)
    torch.manual_seed(0)
    assert not torch.equal(frontend.train()(wave), frontend.eval()(wave))
    assert torch.equal(frontend.eval()(wave), frontend.eval()(wave))
    with pytest.raises(TeacherInputError, match="exceed"):
        frontend(_signal(16000, 2.0))


def test_fbank_refuses_input_shorter_than_one_frame():
    with pytest.raises(ValueError, match="shorter than one 400-sample"):
        KaldiFbank()(torch.zeros(1, 399))


@pytest.mark.parametrize("orig,new", [(32000, 16000), (44100, 32000), (16000, 32000)])
def test_resample_keeps_a_tone_and_the_duration(orig, new):
    t = torch.arange(orig) / orig
    out = resample(torch.sin(2 * math.pi * 440 * t)[None], orig, new)
    assert out.shape == (1, new)
    expected = torch.sin(2 * math.pi * 440 * torch.arange(new) / new)
    assert (out[0, 100:-100] - expected[100:-100]).abs().max() < 2e-3


def test_resample_removes_content_above_the_new_nyquist():
    t = torch.arange(32000) / 32000
    out = resample(torch.sin(2 * math.pi * 12000 * t)[None], 32000, 16000)
    assert out[0, 100:-100].abs().max() < 0.02


def test_resample_identity_and_bad_rates():
    x = torch.randn(2, 100)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 16000)
