"""Models on recordings: how well their embeddings transfer, and predicting an hour-long file in bounded memory.

**Linear probe.** The quick start's scene models (the shipped ``cp_resnet`` fine-tuned on the demo ASC split as
the teacher; ``cp_mobile`` distilled from it and from labels alone, quick start schedule) embed the clips of a task
none of them was trained on: the demo tagging set's sound events (clips with one event; the demo's train and eval
splits), through ``kd.embed`` (what each classifier reads, averaged over the clip). A logistic regression
(scikit-learn, standardised inputs) trains on the train split's embeddings; ``probe_accuracy_teacher``,
``probe_accuracy_distilled`` and ``probe_accuracy_labels`` are its eval accuracies.

**Long file.** A synthetic recording (noise and tones at 44.1 kHz, written block by block) of ``--minutes``
minutes runs through ``kd predict`` (windows of each model's training length) for ``cp_mobile`` (the distilled
checkpoint), ``mn10`` (random weights, 10 s windows) and ``passt_tiny`` (the shipped release), each in its own
process with one thread: ``long_file_peak_rss_mb`` is each process's peak resident memory (``VmHWM``, importing
torch and kd included), ``x_realtime`` the file's duration over the wall time of the prediction.

    python benchmarks/embed_bench.py [--quick] [--minutes 60] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from _recipes import PLAN, demo_asc, train_students

from kd.data import open_dataset
from kd.demo.data import make_demo_data
from kd.demo.quickstart import train_teachers
from kd.embed import get_scene_embeddings, load_model
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from students import create_student

LONG_FILE_RATE = 44100
PREDICT = """
import json, sys, time, torch
torch.set_num_threads(1)
from kd.deploy.predict import predict_files
start = time.perf_counter()
(prediction,) = predict_files(sys.argv[1], [sys.argv[2]], device="cpu", workers=1)
wall = time.perf_counter() - start
assert prediction.error is None, prediction.error
rows = len(prediction.timeline or prediction.events or [])
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "rows": rows}))
"""


def scene_models(work: Path, clips: int, teacher_epochs: int, student_epochs: int) -> dict[str, str]:
    """The fine-tuned CP-ResNet teacher and the two ``cp_mobile`` students (distilled from it, from labels)."""
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    data = demo_asc(work, clips)
    trained = train_teachers(replace(PLAN, teachers=(("cpr", "cp_resnet"),)), data, work / "teachers",
                             epochs=teacher_epochs, tracking_uri=tracking, resume=True)
    teacher = trained["cpr"][0]
    store = str(work / "store.zarr")
    run_teach(TeachConfig(dataset=data, store=store, teachers=(teacher,), tracking_uri=tracking, chunk_size=128,
                          batch_size=32))
    runs = {"distilled": {"teachers": "cpr", "store": store}, "labels": {"teachers": "none"}}
    train_students(work, data, runs, range(1), student_epochs, tracking, metrics=("accuracy",))
    students = {label: next((work / f"students-{student_epochs}ep" / label).glob("*/point.json")).parent
                for label in runs}
    return {"teacher": teacher.checkpoint, **{label: str(folder / "best.pt") for label, folder in students.items()}}


def single_event_clips(work: Path, clips: int) -> tuple[dict, dict[str, list]]:
    """The demo tagging set (AudioSet's HDF5 layout) per split, and its clips with exactly one event."""
    folder = work / "demo-tagging"
    if not (folder / "metadata" / "class_labels_indices.csv").is_file():
        make_demo_data(folder, "tagging", clips=clips, seed=7, seconds=1.0)
    data = {split: open_dataset(f"audioset-hdf5:{folder}", split=split) for split in ("train", "eval")}
    return data, {split: [c for c in d.clips if len(c.labels) == 1] for split, d in data.items()}


def probe_accuracy(model_path: str, data: dict, clips: dict) -> float:
    """Eval accuracy of a logistic regression on the model's scene embeddings of the single-event clips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = load_model(model_path, device="cpu")
    features, labels = {}, {}
    for split, chosen in clips.items():
        audio = np.stack([data[split].load_audio(c, model.sample_rate, 1.0) for c in chosen])
        features[split] = get_scene_embeddings(torch.from_numpy(audio), model).numpy()
        labels[split] = np.array([c.labels[0] for c in chosen])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(features["train"], labels["train"])
    return float(probe.score(features["eval"], labels["eval"]))


def write_long_file(path: Path, minutes: float) -> float:
    """Noise with a tone every few seconds, written 30 s at a time; its duration in seconds."""
    rng = np.random.default_rng(0)
    block = 30 * LONG_FILE_RATE
    total = round(minutes * 60 * LONG_FILE_RATE)
    with sf.SoundFile(path, "w", LONG_FILE_RATE, 1, subtype="PCM_16") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / LONG_FILE_RATE
            tone = 0.2 * np.sin(2 * np.pi * 880 * t) * ((t % 7) < 2)
            f.write((rng.normal(0, 0.05, n) + tone).astype(np.float32))
    return total / LONG_FILE_RATE


def random_checkpoint(path: Path, name: str, seconds: float) -> str:
    torch.manual_seed(0)
    classes = [f"class_{i}" for i in range(10)]
    torch.save({"model": create_student(name, len(classes)).state_dict(),
                "meta": {"kind": "student", "name": name, "classes": classes, "task": "asc", "seconds": seconds}},
               path)
    return str(path)


def predict_long_file(model: str, audio: Path) -> dict:
    """``kd predict`` on ``audio`` in a fresh one-thread process: its wall time and peak memory."""
    env_code = f"import os; os.environ['OMP_NUM_THREADS'] = '1'\n{PREDICT}"
    result = subprocess.run([sys.executable, "-c", env_code, model, str(audio)], capture_output=True, text=True,
                            check=False, cwd=Path(__file__).resolve().parents[1])
    if result.returncode != 0:
        raise SystemExit(f"predict on {model} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 1 epoch, a 30 s file (about a minute)")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long file")
    parser.add_argument("--clips", type=int, default=600, help="demo ASC clips the scene models train on")
    parser.add_argument("--probe-clips", type=int, default=400, help="demo tagging clips of the probe task")
    parser.add_argument("--workdir", default=None, help="keep everything here; a rerun reuses models and data")
    args = parser.parse_args()
    sizes = {"clips": 40, "teacher_epochs": 1, "student_epochs": 1} if args.quick else \
        {"clips": args.clips, "teacher_epochs": PLAN.teacher_epochs, "student_epochs": PLAN.student_epochs}
    minutes, probe_clips = (0.5, 60) if args.quick else (args.minutes, args.probe_clips)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = scene_models(work, **sizes)
        data, clips = single_event_clips(work, probe_clips)
        probes = {f"probe_accuracy_{label}": probe_accuracy(path, data, clips) for label, path in models.items()}
        audio = work / f"long-{minutes:g}min.wav"
        seconds = audio.is_file() and sf.info(audio).duration or write_long_file(audio, minutes)
        runs = {"cp_mobile": models["distilled"], "mn10": random_checkpoint(work / "mn10.pt", "mn10", 10.0),
                "passt_tiny": "passt_tiny"}
        long_file = {name: predict_long_file(model, audio) for name, model in runs.items()}
    print(json.dumps({
        **probes, "probe_clips": {split: len(c) for split, c in clips.items()},
        "long_file_peak_rss_mb": {name: round(r["peak_rss_mb"], 1) for name, r in long_file.items()},
        "x_realtime": {name: round(seconds / r["wall_s"], 1) for name, r in long_file.items()},
        "long_file_seconds": seconds, "windows": {name: r["rows"] for name, r in long_file.items()},
        "wall_seconds": time.perf_counter() - start,
    }))


if __name__ == "__main__":
    main()
