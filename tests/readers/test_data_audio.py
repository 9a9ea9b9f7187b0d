"""Decoding in kd.data: formats from paths and bytes, resampling, mono mixdown, pad/crop, unusable clips."""
import pickle

import numpy as np
import pytest
import soundfile as sf

from kd.data import AudioError, decode_audio, fit_length, load_audio
from kd_errors import KdError

SR = 44100


def tone(freq=440.0, seconds=1.0, sr=SR, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def peak_hz(x, sr):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()]


def write(path, audio, sr=SR, **kwargs):
    sf.write(path, audio, sr, **kwargs)
    return path


@pytest.mark.parametrize("ext,fmt", [("wav", "WAV"), ("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3")])
@pytest.mark.parametrize("from_bytes", [False, True])
@pytest.mark.parametrize("rate", [32000, 16000])
def test_decodes_each_format_from_path_and_bytes_and_resamples(tmp_path, ext, fmt, from_bytes, rate):
    path = write(tmp_path / f"a.{ext}", tone(), format=fmt)
    source = path.read_bytes() if from_bytes else path
    x = load_audio(source, rate)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - rate) <= rate // 100  # 1 s (mp3 frames may add a few ms)
    assert peak_hz(x, rate) == pytest.approx(440, abs=3)
    assert 0.3 < np.abs(x).max() < 0.6


def test_resampling_keeps_duration_and_pitch_whatever_the_file_rate(tmp_path):
    for file_rate in (8000, 22050, 48000):
        x = load_audio(write(tmp_path / f"r{file_rate}.wav", tone(300, 1.0, file_rate), file_rate), 32000)
        assert len(x) == 32000
        assert peak_hz(x, 32000) == pytest.approx(300, abs=2)


def test_mono_mixdown_averages_channels(tmp_path):
    left = tone()
    stereo = np.stack([left, 0.5 * left], axis=1)
    x, rate = decode_audio(write(tmp_path / "s.wav", stereo, subtype="FLOAT"))
    assert rate == SR
    np.testing.assert_allclose(x, 0.75 * left, atol=1e-6)


def test_pad_and_crop_to_requested_seconds(tmp_path):
    path = write(tmp_path / "a.wav", tone(seconds=1.0), subtype="FLOAT")
    longer = load_audio(path, SR, seconds=2.0)
    assert len(longer) == 2 * SR and not longer[SR:].any()
    np.testing.assert_allclose(longer[:SR], tone(), atol=1e-6)
    shorter = load_audio(path, SR, seconds=0.25)
    np.testing.assert_allclose(shorter, tone()[: SR // 4], atol=1e-6)
    assert len(fit_length(np.ones(5, np.float32), 3)) == 3


def test_unusable_clips_raise_audio_error_with_reason(tmp_path):
    cases = {
        "missing": tmp_path / "nope.wav",
        "empty": write_bytes(tmp_path / "empty.wav", b""),
        "unreadable": write_bytes(tmp_path / "corrupt.wav", b"RIFF\x00\x01garbage" + bytes(range(200))),
        "silent": write(tmp_path / "zeros.wav", np.zeros(SR, np.float32)),
        "non-finite": write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), subtype="FLOAT"),
    }
    for reason, path in cases.items():
        with pytest.raises(AudioError) as info:
            load_audio(path, 32000, 1.0, clip_id=reason)
        assert info.value.clip_id == reason
        assert reason in info.value.reason
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"", 32000)
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(b"not audio at all" * 10, 32000)


def test_silence_within_the_kept_part_is_rejected_not_returned_as_zeros(tmp_path):
    audio = np.concatenate([np.zeros(SR, np.float32), tone(seconds=1.0)])
    path = write(tmp_path / "late.wav", audio)
    with pytest.raises(AudioError, match="silent"):
        load_audio(path, 32000, seconds=0.5)
    assert np.abs(load_audio(path, 32000, seconds=2.0)).max() > 0.3


def test_audio_error_survives_pickling_for_worker_processes():
    err = pickle.loads(pickle.dumps(AudioError("clip-1", "silent (all zeros)")))
    assert (err.clip_id, err.reason) == ("clip-1", "silent (all zeros)")
    assert isinstance(err, KdError) and "clip-1" in str(err)


def write_bytes(path, data):
    path.write_bytes(data)
    return path
