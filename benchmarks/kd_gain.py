"""Does distillation help? ``cp_mobile`` distilled from a teacher ensemble vs the same student on labels alone.

Real teachers know more than the student's training set holds: PaSST and AST were pretrained on AudioSet,
then fine-tuned on the task. The demo follows that recipe: the teachers, two CP-ResNets (the CNN half of
CP-JKU's DCASE'23 teacher ensemble; ``kd distill --teachers none --student cp_resnet``, two seeds), are
trained on a larger demo ASC set of other recording locations (another seed, same scenes and devices), then
fine-tuned on the students' training split (``--pretrained``), and taught into one store with ``kd teach``
(students serve as teachers with their checkpoints). The tiny PaSST/AST of ``kd quickstart`` are no good
here: trained from scratch on a few hundred clips they stay below the student (see BENCHMARKS.md).

For each seed, ``cp_mobile`` trains twice with the same budget: from the ensemble (``--kd-lambda`` and
``--temperature``, by default the task's: the DCASE'23 0.02 and 2) and with ``--teachers none``. Scores are
last-epoch eval accuracies (no selection on the eval split). The last line is one JSON object with
``kd_accuracy``, ``baseline_accuracy`` (means over seeds), ``gain`` and the per-seed scores.

    python benchmarks/kd_gain.py [--quick] [--seeds 0 1 2] [--kd-lambda L] [--temperature T] [--workdir DIR]
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
    parser.add_argument("--kd-lambda", type=float, default=None, help="weight of the label loss (task default)")
    parser.add_argument("--temperature", type=float, default=None, help="(task default)")
    parser.add_argument("--workdir", default=None,
                        help="keep everything here (default: a temp folder); a rerun reuses its data, teachers and store")
    parser.add_argument("--student-epochs", type=int, default=None, help="the students' budget (default 30)")
    args = parser.parse_args()
    if args.quick:
        sizes = {"clips": 40, "teacher_clips": 60, "teacher_epochs": 1, "finetune_epochs": 1, "student_epochs": 1}
    else:
        sizes = {"clips": 600, "teacher_clips": 2400, "teacher_epochs": 20, "finetune_epochs": 10, "student_epochs": 30}
    if args.student_epochs:
        sizes["student_epochs"] = args.student_epochs
    seeds = args.seeds[:1] if args.quick else args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.workdir or tmp), seeds=seeds, kd_lambda=args.kd_lambda, temperature=args.temperature,
                     **sizes)
    print(json.dumps(result))


def run(work: Path, clips: int, teacher_clips: int, teacher_epochs: int, finetune_epochs: int, student_epochs: int,
        seeds: list[int], kd_lambda: float | None, temperature: float | None) -> dict:
    from kd.checkpoints import TeacherSpec
    from kd.data import make_demo_data
    from kd.distill import DistillConfig, TeacherChoice, distill
    from kd.inference import evaluate_checkpoint
    from kd.teach import TeachConfig, run_teach

    start = time.perf_counter()
    tracking = f"sqlite:///{work / 'mlflow.db'}"

    def demo(name: str, size: int, seed: int) -> str:
        folder = work / name
        if not (folder / "meta.csv").is_file():
            make_demo_data(folder, "asc", clips=size, seed=seed)
        return f"tau22:{folder}"

    student_data, teacher_data = demo("demo-asc", clips, 0), demo("demo-asc-teachers", teacher_clips, 1)

    def train(data: str, out: str, teachers: str = "none", seed: int = 0, epochs: int = student_epochs,
              student: str = "cp_mobile", **kw):
        return distill(DistillConfig(
            dataset=data, student=student, out=str(work / out), teachers=TeacherChoice.parse(teachers),
            store=str(work / "store.zarr") if teachers != "none" else None, epochs=epochs, batch_size=32,
            seed=seed, tracking_uri=tracking, device="cpu", **{"lr": 4e-3, **kw}))

    teachers, teacher_accuracy = [], {}
    for i, alias in enumerate(("cpr_a", "cpr_b")):
        pretrained = train(teacher_data, alias, seed=100 + i, epochs=teacher_epochs, student="cp_resnet",
                           resume=True).checkpoint  # a rerun in the same --workdir reuses finished teachers
        checkpoint = train(student_data, f"{alias}_finetuned", seed=100 + i, epochs=finetune_epochs,
                           student="cp_resnet", pretrained=pretrained, lr=1e-3, resume=True).checkpoint
        teacher_accuracy[alias] = evaluate_checkpoint(checkpoint, student_data, device="cpu")["accuracy"]
        print(f"teacher {alias}: accuracy {teacher_accuracy[alias]:.3f} on the students' eval split", flush=True)
        teachers.append(TeacherSpec("cp_resnet", checkpoint, alias))
    teach = run_teach(TeachConfig(dataset=student_data, store=str(work / "store.zarr"), teachers=tuple(teachers),
                                  tracking_uri=tracking, chunk_size=128, batch_size=32))

    kd_options = {k: v for k, v in (("kd_lambda", kd_lambda), ("temperature", temperature)) if v is not None}
    runs = {"kd": dict(teachers="cpr_a,cpr_b", **kd_options), "baseline": {}}
    scores: dict[str, list[float]] = {label: [] for label in runs}
    for seed in seeds:
        for label, options in runs.items():
            out = f"student_{label}_{seed}_{student_epochs}ep"
            history = train(student_data, out, seed=seed, **options).history
            scores[label].append(history[-1]["accuracy"])
            print(f"seed {seed} {label}: accuracy {scores[label][-1]:.3f}", flush=True)
    kd, base = statistics.mean(scores["kd"]), statistics.mean(scores["baseline"])
    return {
        "kd_accuracy": kd, "baseline_accuracy": base, "gain": kd - base, "seeds": seeds,
        "kd_per_seed": scores["kd"], "baseline_per_seed": scores["baseline"], "kd_options": kd_options or "task defaults",
        "teacher_accuracy": teacher_accuracy,
        "ensemble_accuracy_on_train": teach.metrics["ensemble"]["accuracy"],
        "clips": clips, "teacher_clips": teacher_clips, "teacher_epochs": teacher_epochs,
        "finetune_epochs": finetune_epochs,
        "student_epochs": student_epochs, "wall_seconds": time.perf_counter() - start,
    }


if __name__ == "__main__":
    main()
