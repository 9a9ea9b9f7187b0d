"""Does distillation help? ``cp_mobile`` distilled from a teacher ensemble vs the same student on labels alone.

Real teachers know more than the student's training set holds: PaSST and AST were pretrained on AudioSet
before being fine-tuned on the task. The demo stands in for that with a larger demo ASC set of other
recording locations (another seed, same scenes and devices) on which the teachers are trained; the
students then train on the small demo ASC set, whose eval split scores everyone.

The teachers are two CP-ResNets (``kd distill --teachers none --student cp_resnet``, the second with
Freq-MixStyle), the CNN half of CP-JKU's DCASE'23 teacher ensemble, taught into one store with ``kd teach``
(students serve as teachers with their checkpoints). The tiny PaSST/AST of ``kd quickstart`` are no good
here: trained from scratch on a few hundred clips they stay below the student (see BENCHMARKS.md).

For each seed, ``cp_mobile`` trains with the same budget three times: from the ensemble with the DCASE'23
defaults (``kd_lambda`` 0.02, ``T`` 2), from the ensemble with ``kd_lambda`` 0.5, ``T`` 1, and with
``--teachers none``. Scores are last-epoch eval accuracies (no selection on the eval split). The last line is
one JSON object with ``kd_accuracy`` (defaults), ``kd_balanced_accuracy``, ``baseline_accuracy`` (means over
seeds), ``gain`` (defaults minus baseline), ``gain_balanced`` and the per-seed scores.

    python benchmarks/kd_gain.py [--quick] [--seeds 0 1 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

RUNS = {  # label: (teachers, kd_lambda, temperature); None = the task's defaults
    "kd": ("cpr_a,cpr_b", None, None),
    "kd_balanced": ("cpr_a,cpr_b", 0.5, 1.0),
    "baseline": ("none", None, None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and budget (< 1 minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=None, help="keep everything here (default: a temp folder)")
    args = parser.parse_args()
    sizes = dict(clips=40, teacher_clips=60, teacher_epochs=1, student_epochs=1) if args.quick else \
        dict(clips=600, teacher_clips=1200, teacher_epochs=15, student_epochs=10)
    seeds = args.seeds[:1] if args.quick else args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.workdir or tmp), seeds=seeds, **sizes)
    print(json.dumps(result))


def run(work: Path, clips: int, teacher_clips: int, teacher_epochs: int, student_epochs: int,
        seeds: list[int]) -> dict:
    from kd.data import make_demo_data
    from kd.distill import DistillConfig, TeacherChoice, distill, evaluate_checkpoint
    from kd.models import TeacherSpec
    from kd.teach import TeachConfig, run_teach

    start = time.perf_counter()
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    student_data = make_demo_data(work / "demo-asc", "asc", clips=clips, seed=0, overwrite=True)["spec"]
    teacher_data = make_demo_data(work / "demo-asc-teachers", "asc", clips=teacher_clips, seed=1,
                                  overwrite=True)["spec"]

    def train(data: str, out: str, teachers: str = "none", seed: int = 0, epochs: int = student_epochs,
              student: str = "cp_mobile", **kw) -> dict:
        return distill(DistillConfig(
            dataset=data, student=student, out=str(work / out), teachers=TeacherChoice.parse(teachers),
            store=str(work / "store.zarr") if teachers != "none" else None, epochs=epochs, batch_size=32,
            lr=4e-3, seed=seed, tracking_uri=tracking, device="cpu", **kw))

    teachers, teacher_accuracy = [], {}
    for i, alias in enumerate(("cpr_a", "cpr_b")):
        checkpoint = train(teacher_data, alias, seed=100 + i, epochs=teacher_epochs, student="cp_resnet",
                           mixstyle_p=0.4 * i)["checkpoint"]
        teacher_accuracy[alias] = evaluate_checkpoint(checkpoint, student_data, device="cpu")["accuracy"]
        print(f"teacher {alias}: accuracy {teacher_accuracy[alias]:.3f} on the students' eval split", flush=True)
        teachers.append(TeacherSpec("cp_resnet", checkpoint, alias))
    teach = run_teach(TeachConfig(dataset=student_data, store=str(work / "store.zarr"), teachers=tuple(teachers),
                                  tracking_uri=tracking, chunk_size=128, batch_size=32))

    scores: dict[str, list[float]] = {label: [] for label in RUNS}
    for seed in seeds:
        for label, (choice, kd_lambda, temperature) in RUNS.items():
            options = {k: v for k, v in (("kd_lambda", kd_lambda), ("temperature", temperature)) if v is not None}
            history = train(student_data, f"student_{label}_{seed}", choice, seed, **options)["history"]
            scores[label].append(history[-1]["accuracy"])
            print(f"seed {seed} {label}: accuracy {scores[label][-1]:.3f}", flush=True)
    mean = {label: statistics.mean(values) for label, values in scores.items()}
    return {
        "kd_accuracy": mean["kd"], "kd_balanced_accuracy": mean["kd_balanced"],
        "baseline_accuracy": mean["baseline"], "gain": mean["kd"] - mean["baseline"],
        "gain_balanced": mean["kd_balanced"] - mean["baseline"], "seeds": seeds,
        "per_seed": scores, "teacher_accuracy": teacher_accuracy,
        "ensemble_accuracy_on_train": teach.metrics["ensemble"]["accuracy"],
        "clips": clips, "teacher_clips": teacher_clips, "teacher_epochs": teacher_epochs,
        "student_epochs": student_epochs, "wall_seconds": time.perf_counter() - start,
    }


if __name__ == "__main__":
    main()
