"""Does distillation help? A student distilled from the teacher ensemble vs the same student on labels alone.

On the demo ASC data: train a tiny PaSST and a tiny AST (``kd train-teacher``), teach both into one store,
then train ``cp_mobile`` with ``--teachers passt,ast`` and with ``--teachers none`` for each seed, with the same
budget. Prints per-seed accuracies and, on its last line, one JSON object with ``kd_accuracy``,
``baseline_accuracy`` (means over seeds) and ``gain``.

    python benchmarks/kd_gain.py [--quick] [--seeds 0 1 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and budget (< 1 minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=None, help="keep everything here (default: a temp folder)")
    args = parser.parse_args()
    clips, teacher_epochs, student_epochs = (40, 1, 1) if args.quick else (600, 12, 10)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        result = run(work, clips, teacher_epochs, student_epochs, args.seeds)
    print(json.dumps(result))


def run(work: Path, clips: int, teacher_epochs: int, student_epochs: int, seeds: list[int]) -> dict:
    from kd.data import make_demo_data
    from kd.distill import DistillConfig, TeacherChoice, distill
    from kd.models import TeacherSpec
    from kd.teach import TeachConfig, run_teach
    from kd.train_teacher import TrainTeacherConfig, train_teacher

    start = time.perf_counter()
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    demo = make_demo_data(work / "demo-asc", "asc", clips=clips, seed=0, overwrite=True)
    teachers = []
    for alias, name in (("passt", "passt_tiny"), ("ast", "ast_tiny")):
        trained = train_teacher(TrainTeacherConfig(
            dataset=demo["spec"], teacher=name, out=str(work / alias), epochs=teacher_epochs, batch_size=32,
            lr=1e-3, mixup=0.3, clip_seconds=1.0, tracking_uri=tracking, device="cpu"))
        print(f"teacher {alias}: accuracy {trained['best']:.3f}", flush=True)
        teachers.append(TeacherSpec(name, trained["checkpoint"], alias))
    store = str(work / "store.zarr")
    run_teach(TeachConfig(dataset=demo["spec"], store=store, teachers=tuple(teachers), tracking_uri=tracking,
                          chunk_size=128, batch_size=32))
    scores: dict[str, list[float]] = {"passt,ast": [], "none": []}
    for seed in seeds:
        for choice in scores:
            result = distill(DistillConfig(
                dataset=demo["spec"], student="cp_mobile", out=str(work / f"student_{choice}_{seed}"),
                store=store if choice != "none" else None, teachers=TeacherChoice.parse(choice),
                epochs=student_epochs, batch_size=32, lr=4e-3, seed=seed, tracking_uri=tracking, device="cpu"))
            scores[choice].append(result["history"][-1]["accuracy"])
            print(f"seed {seed} teachers {choice}: accuracy {scores[choice][-1]:.3f}", flush=True)
    kd, base = statistics.mean(scores["passt,ast"]), statistics.mean(scores["none"])
    return {"kd_accuracy": kd, "baseline_accuracy": base, "gain": kd - base, "seeds": seeds,
            "kd_per_seed": scores["passt,ast"], "baseline_per_seed": scores["none"], "clips": clips,
            "teacher_epochs": teacher_epochs, "student_epochs": student_epochs,
            "wall_seconds": time.perf_counter() - start}


if __name__ == "__main__":
    main()
