"""Models over recordings of any length: windows that cover the file exactly, events merged across window
boundaries, long files read block by block, and teachers run like students."""
import csv
import io

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import main
from kd.data import AudioError, AudioStream, load_audio, open_dataset
from kd.deploy import predict as predict_module
from kd.deploy.predict import open_predictor, predict_files
from kd.deploy.windows import EventTracker, Windowing, each_window, frame_events, sliding_windows, windows_per_batch
from kd.tasks import get_task
from kd_errors import KdError
from students import create_student

RATE = 1000  # the toy detector's sample rate: 100 samples per frame at 10 frames/s


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 5000), window=st.integers(1, 700), hop_fraction=st.floats(0.05, 1.0),
       block=st.integers(1, 900))
def test_windows_cover_the_audio_exactly_whatever_the_blocks(total, window, hop_fraction, block):
    hop = max(1, int(window * hop_fraction))
    audio = np.arange(1, total + 1, dtype=np.float32)
    windows = list(sliding_windows((audio[i:i + block] for i in range(0, total, block)), window, hop))
    starts = [start for start, _, _ in windows]
    assert starts == list(range(0, hop * len(windows), hop))  # from 0, every hop
    last_start, _, last_valid = windows[-1]
    assert last_start + last_valid == total and (len(windows) == 1 or starts[-2] + window < total)  # ends at the end
    for start, samples, valid in windows:
        assert len(samples) == window and valid == min(window, total - start)
        assert np.array_equal(samples[:valid], audio[start:start + valid]) and not samples[valid:].any()


def test_windows_run_as_the_blocks_arrive_not_after_the_whole_file():
    """Bounded memory: the first batch answers after a batch's worth of blocks, not after the file's last."""
    read = []

    def endless_blocks():  # 1 000 blocks of a second: the first answers must come long before the end
        for i in range(1000):
            read.append(i)
            yield np.ones(100, np.float32)

    windowing = Windowing(window=100, hop=100, sample_rate=100)
    first = next(each_window(lambda waves: waves.sum(axis=1), endless_blocks(), windowing, batch_size=4))
    assert first == (0, 100, 100.0) and len(read) <= 5
    assert windows_per_batch(Windowing(320000, 320000, 32000), 16) == 2  # at most 20 s of audio in a batch


def test_windowing_defaults_come_from_the_model_and_bad_hops_are_refused():
    assert Windowing.for_model(32000, 1.0, None) == Windowing(32000, 32000, 32000)  # clip model: back to back
    assert Windowing.for_model(32000, 10.0, 10.0) == Windowing(320000, 160000, 32000)  # frame-wise: half overlap
    assert Windowing.for_model(16000, 10.0, 25.0, hop=0.33).hop == 5120  # rounded to whole frames (8 of 640)
    with pytest.raises(KdError, match="at most the window"):
        Windowing.for_model(32000, 1.0, None, hop=2.0)


class EnergyDetector:
    """A frame-wise model that needs no training: one class, active where a 100-sample frame is loud."""

    sample_rate, frames_per_second, classes, seconds, task = RATE, 10.0, ["tone"], 2.0, get_task("sed")

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        frames = waveforms.reshape(len(waveforms), -1, 100)
        return np.where(np.abs(frames).mean(-1, keepdims=True) > 0.1, 8.0, -8.0).astype(np.float32)


def test_an_event_across_window_boundaries_comes_out_once_within_a_frame_of_the_truth():
    audio = np.zeros(10 * RATE, np.float32)
    onset, offset = 1.55, 4.35  # crosses the boundaries of the 2 s windows at 2 and 4 s, and the hops at 3 and 4 s
    audio[int(onset * RATE):int(offset * RATE)] = 0.5
    detector = EnergyDetector()
    for hop in (1.0, 2.0):
        windowing = Windowing.for_model(RATE, 2.0, 10.0, hop=hop)
        blocks = (audio[i:i + 730] for i in range(0, len(audio), 730))
        (event,) = frame_events(detector.logits, detector.task, detector.classes, 10.0, blocks, windowing, 0.5)
        assert event[2] == "tone" and abs(event[0] - onset) <= 0.1 and abs(event[1] - offset) <= 0.1


def test_events_still_open_at_the_end_stop_at_the_file_end():
    tracker = EventTracker(["a", "b"], 10.0, 0.5)
    tracker.push(np.array([[0.9, 0.1], [0.9, 0.8]]))
    tracker.push(np.array([[0.1, 0.9], [0.1, 0.9]]))
    assert tracker.finish(0.35) == [(0.0, 0.2, "a"), (0.1, 0.35, "b")]


@pytest.fixture(scope="module")
def asc_student(demo_asc, tmp_path_factory):
    """A kd distill-style checkpoint of cp_mobile_tiny (random weights) for the demo's scenes and 1 s clips."""
    path = tmp_path_factory.mktemp("windows") / "student.pt"
    torch.manual_seed(0)
    model = create_student("cp_mobile_tiny", 10)
    classes = demo_classes(demo_asc)
    torch.save({"model": model.state_dict(), "meta": {"kind": "student", "name": "cp_mobile_tiny", "classes": classes,
                                                      "task": "asc", "seconds": 1.0}}, path)
    return str(path)


def demo_classes(demo):
    return open_dataset(demo["spec"], split="train").classes


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """7.3 s of noise at 44.1 kHz (resampled to the model's rate block by block)."""
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, int(7.3 * 44100)).astype(np.float32), 44100)
    return str(path)


def test_a_long_file_gets_a_timeline_of_windows_read_block_by_block(asc_student, long_file, monkeypatch):
    def whole_file_decode(*args, **kwargs):
        raise AssertionError("a file longer than the window must not be decoded whole")

    monkeypatch.setattr(predict_module, "load_audio", whole_file_decode)
    (prediction,) = predict_files(asc_student, [long_file], device="cpu", batch_size=3)
    spans = [(row.start, row.end) for row in prediction.timeline]
    assert spans == [(float(s), float(s + 1)) for s in range(7)] + [(7.0, pytest.approx(7.3))]
    assert len(prediction.top) == 3 and all(len(row.top) == 3 for row in prediction.timeline)
    (halves,) = predict_files(asc_student, [long_file], device="cpu", window=1.0, hop=0.5)
    assert [row.start for row in halves.timeline] == [s / 2 for s in range(14)] and halves.timeline[-1].end == \
        pytest.approx(7.3)


def test_the_timeline_is_the_model_run_on_each_window(asc_student, long_file):
    (prediction,) = predict_files(asc_student, [long_file], device="cpu", top=10)
    predictor = open_predictor(asc_student, "cpu")
    audio = load_audio(long_file, predictor.sample_rate, None)
    second = audio[predictor.sample_rate:2 * predictor.sample_rate][None]
    probs = torch.from_numpy(predictor.logits(second)).softmax(-1)[0].numpy()
    expected = {predictor.classes[i]: probs[i] for i in range(10)}
    assert all(p == pytest.approx(expected[name], abs=1e-5) for name, p in prediction.timeline[1].top)


def test_predict_prints_the_timeline_as_csv_and_as_spans(asc_student, long_file):
    as_csv = CliRunner().invoke(main, ["predict", asc_student, long_file, "--format", "csv", "--device", "cpu"])
    rows = list(csv.reader(io.StringIO(as_csv.output)))
    assert as_csv.exit_code == 0 and rows[0][:3] == ["path", "start", "end"] and len(rows) == 1 + 8
    assert [float(r[1]) for r in rows[1:]] == list(range(8)) and float(rows[-1][2]) == pytest.approx(7.3)
    table = CliRunner().invoke(main, ["predict", asc_student, long_file, "--device", "cpu"])
    assert table.exit_code == 0 and "timeline" in table.output and "0.0-" in table.output


def test_a_stream_reports_a_silent_file_and_matches_whole_file_decoding(tmp_path, long_file):
    blocks = list(AudioStream(long_file, 32000, block_seconds=0.7))
    assert max(len(b) for b in blocks) <= 0.71 * 32000
    assert np.allclose(np.concatenate(blocks), load_audio(long_file, 32000, None), atol=1e-6)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(5 * 16000, np.float32), 16000)
    with pytest.raises(AudioError, match="silent"):
        list(AudioStream(str(silent), 32000))


def test_a_registered_teacher_predicts_with_the_classes_of_its_release(demo_asc):
    clip = open_dataset(demo_asc["spec"], split="eval").clips[0].source
    (prediction,) = predict_files("cp_resnet", [clip], device="cpu", top=2)
    assert {name for name, _ in prediction.top} <= set(demo_classes(demo_asc))
    with pytest.raises(KdError, match="no registered teacher"):
        predict_files("no_such_model", [clip])
