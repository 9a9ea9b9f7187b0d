"""The ``kd`` command line: a thin click layer over library functions.

Each command parses its options, calls one function of the library and renders the result with rich.
Heavy imports (torch, zarr, dask, mlflow) happen inside the commands, so ``kd --help`` is instant. A
user's mistake (a bad path, a store built for other classes, a checkpoint that does not fit) ends in one
red line and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Self

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kd.options import (
    CLIP_CODECS,
    MISSING_POLICIES,
    PRECISIONS,
    PREDICTION_FORMATS,
    QUANTIZATIONS,
    SOFT_LOSSES,
    SPACES,
    TASK_NAMES,
    VIEW_MODES,
)
from kd_errors import KdError

console = Console(stderr=True)
out = Console()


class KdGroup(click.Group):
    """A group whose commands turn user errors into one line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KdError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=KdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="kd-audio", prog_name="kd")
def main() -> None:
    """Knowledge distillation for audio.

    Teach once, distil many times: `kd teach` runs teacher transformers (PaSST, AST, ensembles) over a
    dataset and stores their logits; `kd distill` trains small students (MobileNetV3, DyMN, CP-Mobile,
    frame-wise SED models) from any ensemble of stored teachers. MLflow records every run.
    """


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--task", type=click.Choice(TASK_NAMES), default="asc", show_default=True,
              help="asc: TAU22 layout, scenes through simulated devices; tagging: AudioSet HDF5 layout; "
                   "sed: AudioSet-Strong layout with onsets/offsets.")
@click.option("--clips", type=int, default=None, help="Clips over all splits (default: asc 600, tagging 400, sed 300).")
@click.option("--eval-clips", type=int, default=None,
              help="Of which in the eval split (default: asc 30 %, tagging/sed 25 %).")
@click.option("--seconds", type=float, default=None, help="Clip length (default: asc 1 s, tagging 3 s, sed 4 s).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
def demo_data(out, task, clips, eval_clips, seconds, seed, overwrite) -> None:
    """Write a small synthetic dataset in a real dataset's exact layout, for trying kd out."""
    from kd.demo.data import make_demo_data

    info = make_demo_data(out, task, clips=clips, seed=seed, seconds=seconds, overwrite=overwrite,
                          eval_clips=eval_clips)
    splits = ", ".join(f"{n} {s}" for s, n in info["splits"].items())
    out_console = f"wrote {info['clips']} clips ({splits}) of {len(info['classes'])} classes to {info['path']}"
    console.print(out_console, highlight=False)
    console.print(f"use it as  --dataset {info['spec']}", highlight=False)


@main.command("teachers")
@click.argument("pattern", required=False)
def list_teachers_cmd(pattern) -> None:
    """List the registered teachers (optionally matching a shell PATTERN such as 'passt_s_*')."""
    from teachers import create_teacher, list_teachers, teacher_cfg

    table = Table("teacher", "params", "sample rate", "context", "frames/s", "AudioSet mAP")
    table.columns[0].no_wrap = True
    for name in list_teachers(pattern):
        cfg = teacher_cfg(name)
        with _meta_device():
            model = create_teacher(name)
        params = sum(p.numel() for p in model.parameters())
        fps = f"{model.frames_per_second:g}" if model.frames_per_second else "-"
        mean_ap = f"{cfg['audioset_map']:.3f}" if cfg.get("audioset_map") else "-"
        table.add_row(name, f"{params / 1e6:.2f} M", f"{model.sample_rate}", f"{model.clip_seconds:g} s", fps, mean_ap)
    out.print(table)


def training_options(*, batch_size: int, lr: float, epochs: int = 10):
    """The options every training command shares (:class:`kd.train.job.TrainingOptions`), with the command's defaults."""
    options = [
        click.option("--train-split", default="train", show_default=True),
        click.option("--eval-split", default="eval", show_default=True),
        click.option("--seconds", type=float, default=None,
                     help="Clip length fed to the model (default: the store's, else the dataset's; for a teacher, "
                          "its context, which this also sets for the tiny teachers)."),
        click.option("--epochs", type=int, default=epochs, show_default=True),
        click.option("--eval-every", type=int, default=1, show_default=True,
                     help="Evaluate after every N-th epoch and the last (each evaluation also re-estimates "
                          "BatchNorm statistics; on small data that costs as much as an epoch of training)."),
        click.option("--batch-size", type=int, default=batch_size, show_default=True),
        click.option("--lr", type=float, default=lr, show_default=True, help="Peak learning rate (AdamW)."),
        click.option("--mixup", type=float, default=0.3, show_default=True, help="Mixup Beta alpha; 0 disables."),
        click.option("--mixstyle", "mixstyle_p", type=float, default=0.0, show_default=True,
                     help="Probability of Freq-MixStyle per batch (0.4 in the DCASE'23 system)."),
        click.option("--dir", "dir_folder", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Folder of device impulse responses to convolve device-a clips with."),
        click.option("--dir-p", type=float, default=0.4, show_default=True, help="Probability of the DIR augmentation."),
        click.option("--roll", "roll_seconds", type=float, default=0.0, show_default=True,
                     help="Max time roll in seconds."),
        click.option("--gain", "gain_db", type=float, default=0.0, show_default=True, help="Max random gain in dB."),
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for last.pt / best.pt."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N (torchrun: each rank its own GPU)."),
        click.option("--decode-workers", type=int, default=0, show_default=True,
                     help="Processes that decode audio (and read stored logits) beside training."),
        click.option("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."),
        click.option("--average-last", type=int, default=0, metavar="K",
                     help="Hand on the mean of the weights after the last K epochs (BatchNorm re-estimated), saved "
                          "as OUT/averaged.pt: the model evaluated, taught and exported (default: the best epoch)."),
        click.option("--swa-from", type=int, default=0, metavar="EPOCH",
                     help="The same average over every epoch from EPOCH on (SWA); instead of --average-last."),
        click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (same options)."),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@main.command("train-teacher")
@click.option("--dataset", required=True, metavar="FORMAT:PATH",
              help="Labelled dataset: audioset-hdf5:FILE, audioset:DIR, audioset-strong:DIR, tau22:DIR, manifest:FILE.")
@click.option("--teacher", required=True, metavar="NAME", help="Registered teacher (see `kd teachers`).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Official or earlier checkpoint to fine-tune from (default: train from scratch).")
@training_options(batch_size=16, lr=1e-4)
def train_teacher_cmd(**options) -> None:
    """Fine-tune a teacher on a labelled dataset (CE for scenes, BCE for tags, frame BCE for SED)."""
    from kd.train.teacher import TrainTeacherConfig, train_teacher

    with TrainingProgress() as bar:
        result = train_teacher(TrainTeacherConfig(**options), on_epoch=bar.on_epoch, on_batch=bar.on_batch)
    if result.main_process:  # torchrun: rank 0 reports for the job
        console.print(f"best {result.metric} {result.best:.4f}; checkpoint {result.checkpoint}", highlight=False)


class TrainingProgress:
    """A rich bar over each epoch's batches (with the time left) and one line of metrics when an epoch ends."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_batch(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task("train", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def on_epoch(self, epoch: int, record: dict) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        shown = {k: v for k, v in record.items() if not k.startswith("acc_") or k in ("acc_seen", "acc_unseen")}
        console.print(f"epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items() if k != "epoch"),
                      highlight=False)


@main.command("teach")
@click.option("--dataset", required=True, metavar="FORMAT:PATH",
              help="audioset-hdf5:FILE, audioset:DIR, audioset-strong:DIR, tau22:DIR or manifest:FILE.")
@click.option("--split", default=None, help="Split to teach (default: the format's default, usually train).")
@click.option("--teacher", "teachers", multiple=True, required=True, metavar="[ALIAS:]NAME[=CHECKPOINT]",
              help="A teacher to run (repeat for an ensemble): a registered teacher, or a clip-level student "
                   "trained by `kd distill` with its checkpoint. Without a checkpoint it runs with random weights.")
@click.option("--store", required=True, metavar="URL", help="Logit store: a path, file://, memory:// or s3:// URL.")
@click.option("--codec", type=click.Choice(CLIP_CODECS), default="q8", show_default=True,
              help="How clip logits are stored: q8 (8-bit, designed for KD targets), f16, f32, or topk (the --topk "
                   "largest of each clip and view, the rest as one number: many views of many classes in a few "
                   "bytes each).")
@click.option("--topk", type=int, default=20, show_default=True, help="Logits --codec topk keeps per clip and view.")
@click.option("--workers", type=int, default=None,
              help="Local dask worker processes (default: one per visible GPU, each pinned to it; else 1).")
@click.option("--decode-workers", type=int, default=None,
              help="Threads decoding audio in each worker, ahead of the device (default: the worker's cores).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="A dask.distributed scheduler to run on instead; workers started with --resources GPU=1 each "
                   "get chunks for their GPU.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--chunk-size", type=int, default=256, show_default=True, help="Clips per store chunk (new stores).")
@click.option("--seconds", type=float, default=None,
              help="Audio length every clip is cropped or padded to, as the student will see it (default: the "
                   "metadata's clip length, else the 90th percentile of a decoded sample of clips, each clip fed at "
                   "its own length where lengths vary; never shorter than the teachers take; longer clips are "
                   "windowed by the teachers).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (in every worker).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Teacher arithmetic (autocast): auto is fp16 on GPUs with tensor cores, else fp32; a clip whose "
                   "logits overflow in fp16/bf16 is run again in fp32.")
@click.option("--dashboard", is_flag=True, help="Serve the dask dashboard on 127.0.0.1 (needs bokeh).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--transfer", multiple=True, metavar="FORMAT:PATH",
              help="Also teach these clips (labels ignored) into the store: a transfer set for `kd distill "
                   "--transfer`; folder:DIR takes every audio file below DIR. Repeat for several.")
@click.option("--views", type=int, default=1, show_default=True,
              help="Augmented views per clip the teachers run on (view 0 is the clean clip); `kd distill` "
                   "replays them so the student trains on exactly the inputs the teachers heard.")
@click.option("--augment", default="", metavar="KIND[,KIND...]",
              help="What the views draw: dir (impulse responses from --dir), roll, gain, speed.")
@click.option("--dir", "dir_folder", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of device impulse responses for --augment dir.")
@click.option("--view-seed", type=int, default=0, show_default=True, help="Seed of the per-clip view draws.")
@click.option("--max-failed", "max_failed", type=float, default=0.05, show_default=True, metavar="FRACTION",
              help="Exit with an error when more than this fraction of the clips has no logits (unreadable, silent, "
                   "too short to be a recording); what was taught is kept either way.")
def teach_cmd(dataset, split, teachers, store, codec, topk, workers, decode_workers, scheduler, batch_size, chunk_size,
              seconds, device, precision, dashboard, tracking_uri, transfer, views, augment, dir_folder,
              view_seed, max_failed) -> None:
    """Run teachers once over a dataset and store their logits (resumable: rerun to continue)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from kd.core.checkpoints import TeacherSpec
    from kd.teach.config import TeachConfig
    from kd.teach.run import check_failed_share, run_teach

    cfg = TeachConfig(
        dataset=dataset, split=split, teachers=tuple(TeacherSpec.parse(t) for t in teachers), store=store,
        codec=codec, topk=topk, workers=workers, decode_workers=decode_workers, scheduler=scheduler,
        batch_size=batch_size, chunk_size=chunk_size, seconds=seconds, device=device, precision=precision, dashboard=dashboard,
        tracking_uri=tracking_uri, transfer=tuple(transfer), views=views,
        augment=tuple(k for k in augment.split(",") if k.strip()), dir_folder=dir_folder, view_seed=view_seed,
        max_failed_fraction=max_failed,
    )
    columns = (TextColumn("teaching"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("teach", total=None, rate="")

        def on_progress(done: int, total: int) -> None:
            elapsed = progress.tasks[0].elapsed or 0
            rate = f"{done / elapsed:.1f} clips/s" if elapsed else ""
            progress.update(task, completed=done, total=total, rate=rate)

        summary = run_teach(cfg, on_progress=on_progress,
                            on_warning=lambda m: console.print(f"[bold yellow]warning:[/] {m}", highlight=False),
                            on_status=lambda m: console.print(m, highlight=False, soft_wrap=True))
    _print_teach_summary(summary)
    check_failed_share(summary, cfg.max_failed_fraction)


def _print_teach_summary(summary) -> None:
    from kd.data import ClipLengths

    info = summary.store_info
    table = Table("", "", title="kd teach", show_header=False)
    table.add_row("store", summary.store)
    table.add_row("clips", f"{summary.clips} ({summary.chunks_run} chunks run, {summary.chunks_skipped} already done)")
    if summary.clip_lengths:
        lengths = ClipLengths(**{k: v for k, v in summary.clip_lengths.items()
                                 if k in ClipLengths.__dataclass_fields__})
        table.add_row("clip length", lengths.describe())
        table.add_row("fed as", summary.fed_as)
    for name, count in summary.written.items():
        table.add_row(f"written by {name}", str(count))
    kinds = ", ".join(f"{n} {kind}" for kind, n in summary.failure_kinds.items())
    failed = f"{len(summary.failures)} ({summary.failed_fraction:.1%})" if summary.failures else "0"
    table.add_row("failed clips", failed + (f": {kinds}" if kinds else ""))
    if summary.devices:
        table.add_row("devices", ", ".join(summary.devices))
    if summary.decode_clips_per_s_per_thread:
        table.add_row("decoding", f"{summary.decode_clips_per_s_per_thread:.1f} clips/s per thread, "
                                  f"{summary.decode_threads} threads per worker")
    table.add_row("store size", f"{info.get('bytes_on_disk', 0) / 1e6:.2f} MB")
    if info.get("bytes_per_logit") is not None:
        table.add_row("bytes per logit", f"{info['bytes_per_logit']:.3f}")
    table.add_row("wall time", f"{summary.wall_seconds:.1f} s")
    for view, values in summary.metrics.items():
        table.add_row(f"quality of {view}", "  ".join(f"{k} {v:.3f}" for k, v in values.items()
                                                   if not k.startswith("acc_") or k in ("acc_seen", "acc_unseen")))
    if summary.run_id:
        table.add_row("MLflow run", summary.run_id)
    out.print(table)
    if summary.failures:
        from kd.core.failures import group_failures

        groups = Table("kind", "clips", "for example", "what fixes it", title="clips without logits, by reason")
        for group in group_failures(summary.failures):
            groups.add_row(group.kind, str(group.count), f"{group.example_id}: {group.example_reason}", group.fix)
        out.print(groups)


def distillation_options(command):
    """The options of what a student distils from (:class:`kd.train.distill.DistillConfig`): the dataset, the stored
    teachers and the KD loss, shared by `kd distill` and `kd device-finetune`."""
    options = [
        click.option("--dataset", required=True, metavar="FORMAT:PATH", help="The dataset the store was taught on."),
        click.option("--store", default=None, metavar="URL", help="Logit store written by `kd teach`."),
        click.option("--teachers", default="none", show_default=True, metavar="NAME[,NAME...][:W,W...]|none",
                     help="Stored teachers to distil from (an ensemble view, optionally weighted); none: labels only."),
        click.option("--space", type=click.Choice(SPACES), default="logit", show_default=True,
                     help="Average ensemble members' logits or their probabilities."),
        click.option("--kd-lambda", type=float, default=None,
                     help="Weight of the label loss; the KD loss gets 1 - lambda (default: asc 0.02, else 0.1)."),
        click.option("--temperature", type=float, default=None, help="KD temperature (default: asc 2, else 1)."),
        click.option("--soft-loss", type=click.Choice(SOFT_LOSSES), default="probs", show_default=True,
                     help="What the KD loss matches: the teacher's probabilities at --temperature (KL for scenes, "
                          "BCE for tags and events) or its logits (mean squared error; needs every logit, so not a "
                          "store taught with --codec topk)."),
        click.option("--missing", type=click.Choice(MISSING_POLICIES), default="error", show_default=True,
                     help="What to do with training clips that have no stored logits."),
        click.option("--transfer", multiple=True, metavar="FORMAT:PATH",
                     help="A transfer set: clips the store holds teacher logits for, used without labels (soft loss "
                          "only); folder:DIR takes every audio file below DIR. Repeat for several."),
        click.option("--transfer-ratio", type=float, default=1.0, show_default=True,
                     help="Transfer clips per labelled clip in each batch."),
        click.option("--views", type=click.Choice(VIEW_MODES), default=None,
                     help="Which stored view a clip trains on, for stores taught with --views K: consistent (the "
                          "view's augmentation replayed, its logits the target; the default there), clean (view 0 "
                          "with online augmentations), random (a random view's logits for the clean input) or "
                          "clean-targets (the view's augmentation replayed, the clean clip's logits the target)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("distill")
@click.option("--student", required=True, metavar="NAME", help="Registered student (see `kd students`).")
@click.option("--pretrained", "student_checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Student checkpoint to start from (e.g. an official EfficientAT release).")
@distillation_options
@click.option("--log-model/--no-log-model", default=True, show_default=True,
              help="Log the student as an MLflow model (PyTorch flavour, takes waveforms; about 2 s on a CPU).")
@training_options(batch_size=32, lr=1e-3)
def distill_cmd(teachers, transfer, **options) -> None:
    """Train a student from stored teacher logits (hard-label + KD loss), evaluating every epoch."""
    from kd.train.distill import DistillConfig, TeacherChoice, distill, patience_hint

    cfg = DistillConfig(teachers=TeacherChoice.parse(teachers), transfer=tuple(transfer), **options)
    with TrainingProgress() as bar:
        result = distill(cfg, on_epoch=bar.on_epoch, on_batch=bar.on_batch)
    if result.main_process:  # torchrun: rank 0 reports for the job
        console.print(f"best {result.metric} {result.best:.4f}; {result.cost.params:,} params, "
                      f"{result.cost.macs / 1e6:.1f} MMACs; checkpoint {result.checkpoint}", highlight=False)
        hint = patience_hint(result.history)
        if hint:
            console.print(f"[bold yellow]hint:[/] {hint}", highlight=False, soft_wrap=True)


@main.command("device-finetune")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False), metavar="CKPT")
@click.option("--devices", default="", metavar="DEVICE[,DEVICE...]",
              help="Recording devices to fine-tune for (default: every device of the training split).")
@distillation_options
@training_options(batch_size=32, lr=1e-4, epochs=2)
def device_finetune_cmd(checkpoint, devices, teachers, transfer, **options) -> None:
    """Fine-tune a distilled student once per recording device (still distilling, on that device's clips) into one
    checkpoint, OUT/device_specific.pt: the general model plus each device's parameters.

    CKPT: the general student (a `kd distill` checkpoint). `kd eval` runs each clip through its device's model, `kd
    predict --device-id` and `kd export --device-id` pick one; devices it has none for get the general model.
    """
    from kd.train.devices import DeviceFinetuneConfig, finetune_devices
    from kd.train.distill import TeacherChoice

    cfg = DeviceFinetuneConfig.create(checkpoint, devices=tuple(d.strip() for d in devices.split(",") if d.strip()),
                                      teachers=TeacherChoice.parse(teachers), transfer=tuple(transfer), **options)
    with TrainingProgress() as bar:
        result = finetune_devices(cfg, on_device=lambda d: console.print(f"device {d}", highlight=False),
                                  on_epoch=bar.on_epoch, on_batch=bar.on_batch)
    table = Table("", result.metric, title=f"{escape(result.checkpoint)} on {cfg.distill.eval_split}",
                  title_justify="left")
    table.add_row("general model", f"{result.general[result.metric]:.4f}")
    table.add_row(f"device-specific ({', '.join(result.devices)})", f"{result.device_specific[result.metric]:.4f}")
    table.add_row("gain", f"{result.gain:+.4f}")
    out.print(table)


@main.command("eval")
@click.argument("model", type=click.Path(exists=True, dir_okay=False), metavar="CKPT|MODEL.onnx")
@click.option("--dataset", required=True, metavar="FORMAT:PATH")
@click.option("--split", default="eval", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_cmd(model, dataset, split, device, as_json) -> None:
    """Evaluate a student on a dataset split: a checkpoint of `kd distill` (PyTorch) or a file of `kd export`
    (ONNX Runtime), with the same metrics. A device-specific checkpoint (`kd device-finetune`) scores each clip with
    its recording device's parameters (the general ones for devices it has none for)."""
    from kd.deploy.predict import evaluate_checkpoint

    metrics = evaluate_checkpoint(model, dataset, split=split, device=device)
    if as_json:
        print_json(metrics)
        return
    table = Table("metric", "value", title=f"{model} on {dataset} ({split})")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)


@main.command("predict")
@click.argument("model", metavar="MODEL")
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIO...")
@click.option("--top", type=int, default=3, show_default=True, help="Classes shown per file and per window.")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Event threshold (frame-wise models).")
@click.option("--window", type=float, default=None, metavar="SECONDS",
              help="Window the model runs on (default: the clip length it was trained on).")
@click.option("--hop", type=float, default=None, metavar="SECONDS",
              help="Hop between windows (default: the window for clip models, half of it for frame-wise models).")
@click.option("--format", "fmt", type=click.Choice(["table", *PREDICTION_FORMATS]), default="table", show_default=True,
              help="csv and json print every window (clip models) or event to stdout, for scripts.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Windows (or short files) run together.")
@click.option("--workers", type=int, default=4, show_default=True, help="Threads decoding audio.")
@click.option("--device", default="auto", show_default=True)
@click.option("--device-id", default=None, metavar="DEVICE",
              help="The recording device of the audio: a device-specific checkpoint (`kd device-finetune`) runs with "
                   "its parameters for DEVICE (its general ones if it has none for DEVICE).")
def predict_cmd(model, inputs, top, threshold, window, hop, fmt, batch_size, workers, device, device_id) -> None:
    """What a model hears in audio files of any length: per file its top classes and a timeline of windows (clip
    models), or the events it detects with onsets and offsets (frame-wise models).

    MODEL: a `kd distill` or `kd train-teacher` checkpoint, a `kd export` .onnx file, or a registered teacher (NAME
    runs the release that ships with kd, NAME=CHECKPOINT another file, e.g. an official release). AUDIO: audio
    files, folders (searched recursively), glob patterns ('clips/**/*.wav') or list files (.txt/.lst, one path per
    line). Long recordings are read block by block in bounded memory. Exit code 1 when some files could not be
    decoded (their rows say why).
    """
    from kd.deploy.predict import format_predictions, predict_files

    predictions = predict_files(model, inputs, top=top, threshold=threshold, device=device, batch_size=batch_size,
                                workers=workers, device_id=device_id, window=window, hop=hop)
    if fmt != "table":
        click.echo(format_predictions(predictions, fmt), nl=False)
    else:
        _print_predictions(predictions)
    failed = sum(p.error is not None for p in predictions)
    if failed:
        console.print(f"[bold yellow]{failed} of {len(predictions)} files could not be decoded[/]", highlight=False)
        sys.exit(1)


@main.command("embed")
@click.argument("model", metavar="MODEL")
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIO...")
@click.option("--out", required=True, type=click.Path(), metavar="OUT.zarr|OUT.npz",
              help="Where the embeddings go: a Zarr group, or a NumPy .npz file.")
@click.option("--window", type=float, default=None, metavar="SECONDS",
              help="Window the model runs on (default: the clip length it was trained on).")
@click.option("--hop", type=float, default=None, metavar="SECONDS",
              help="Hop between windows (default: the window for clip models, half of it for frame-wise models).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Windows run together.")
@click.option("--device", default="auto", show_default=True)
def embed_cmd(model, inputs, out, window, hop, batch_size, device) -> None:
    """Embeddings of audio files of any length: per file a scene embedding, and timestamped embeddings (one per
    window for clip models, one per frame for frame-wise models) with their times.

    MODEL: a `kd distill` or `kd train-teacher` checkpoint, a `kd export` .onnx file, or a registered teacher (NAME
    or NAME=CHECKPOINT). The embedding is what the model's classifier reads. OUT holds `scene` [files, D],
    `embeddings` [rows, D] with `timestamps` (seconds) and `offsets` [files + 1] (file i owns rows offsets[i] to
    offsets[i+1]), and the files' paths. Python: kd.embed.load_model / get_scene_embeddings /
    get_timestamp_embeddings (the HEAR API).
    """
    from kd.embed import embed_files, load_model, write_embeddings

    embedder = load_model(model, device=device, window=window, hop=hop, batch_size=batch_size)
    with console.status(f"embedding with {model}"):
        done, failed = embed_files(embedder, inputs)
    for path, reason in failed.items():
        console.print(f"[yellow]skipped {escape(path)}: {escape(reason)}[/]", highlight=False)
    written = write_embeddings(done, out, model)
    rows = sum(len(e.timestamps) for e in done)
    console.print(f"{len(done)} files: scene embeddings [{len(done)}, {embedder.scene_embedding_size}], "
                  f"{rows} timestamped embeddings [{rows}, {embedder.timestamp_embedding_size}] in {written}",
                  highlight=False)
    if failed:
        sys.exit(1)


@main.command("submit")
@click.argument("model", type=click.Path(exists=True, dir_okay=False), metavar="CKPT|MODEL.onnx")
@click.option("--dataset", required=True, metavar="FORMAT:PATH",
              help="The files to predict: tau22:DIR (its eval split), or folder:DIR for the evaluation set.")
@click.option("--split", default=None,
              help="The split whose files get a row each (default: eval; folder:DIR, e.g. the challenge's evaluation "
                   "set, which has no labels: every audio file below DIR).")
@click.option("--label", required=True, help="The system's label, e.g. Surname_INST_task1_1 (names both files).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the two files.")
@click.option("--score-split", default=None, help="A labelled split whose accuracy goes into the metadata.")
@click.option("--device", default="auto", show_default=True)
def submit_cmd(model, dataset, split, label, out, score_split, device) -> None:
    """A DCASE Task 1 submission: LABEL.output.csv (per file the scene and every scene's probability) and
    LABEL.meta.yaml (student, teachers, training split, parameters, MACs, parameter memory by data type).

    MODEL: a `kd distill` checkpoint or a `kd export` .onnx file (int8 included): what is submitted is what was
    measured.
    """
    from kd.deploy.submit import SubmitConfig, submit

    result = submit(SubmitConfig(model, dataset, out, label, split=split, score_split=score_split, device=device))
    scored = f"; accuracy on {score_split}: {result.accuracy:.4f}" if result.accuracy is not None else ""
    out_console = f"{result.files} files -> {result.output}, metadata {result.meta}{scored}"
    console.print(escape(out_console), highlight=False)


def _print_predictions(predictions) -> None:
    """One table, a row per file; paths relative to the files' common folder (named in the title), never wrapped.
    A file of several windows also shows its timeline, consecutive windows with the same top class as one span."""
    from kd.deploy.predict import timeline_spans

    paths = [p.path for p in predictions]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    shown = [os.path.relpath(os.path.abspath(p), root) for p in paths]
    sed = any(p.events is not None for p in predictions)
    table = Table(title=f"{len(predictions)} files in {escape(root)}", title_justify="left")
    table.add_column("file", no_wrap=True, min_width=max(len(s) for s in shown))
    table.add_column("events (onset-offset)" if sed else "top classes (probability)")
    if not sed and any(len(p.timeline or ()) > 1 for p in predictions):
        table.add_column("timeline (top class of the windows)")
    for path, p in zip(shown, predictions):
        if p.error:
            cells = [f"[red]{escape(p.error)}[/]"]
        elif sed:
            cells = [escape("\n".join(f"{on:.2f}-{off:.2f} s {name}" for on, off, name in p.events) or "-")]
        else:
            cells = [escape("   ".join(f"{name}\u00a0{prob:.3f}" for name, prob in p.top))]  # no break inside an entry
            if len(p.timeline) > 1:
                cells.append(escape("\n".join(f"{start:.1f}-{end:.1f} s {name} ({mean:.2f})"
                                              for start, end, name, mean in timeline_spans(p.timeline))))
        table.add_row(escape(path), *cells)
    out.print(table)


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), metavar="FILE.onnx",
              help="The file to write.")
@click.option("--frontend/--no-frontend", default=True, show_default=True,
              help="Include the log-mel frontend (the file takes waveforms) or not (it takes spectrograms).")
@click.option("--seconds", type=float, default=None,
              help="Clip length the file is exported, checked and calibrated for (default: the checkpoint's).")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=None,
              help="Static int8 quantisation of the network (the frontend stays float32); needs --calibration.")
@click.option("--calibration", default=None, metavar="FORMAT:PATH",
              help="Dataset with the checkpoint's classes: its train split calibrates int8 and probes the float32 "
                   "parity check, its eval split measures what int8 costs.")
@click.option("--calibration-clips", type=int, default=256, show_default=True, help="Training clips calibrated on.")
@click.option("--check-clips", type=int, default=2000, show_default=True, help="At most this many eval clips.")
@click.option("--max-drop", type=float, default=0.01, show_default=True,
              help="Largest acceptable int8 drop of the task's metric (0.01: one point of accuracy).")
@click.option("--qat-epochs", type=int, default=2, show_default=True,
              help="Quantisation-aware fine-tuning epochs when post-training int8 drops more than --max-drop (0: never).")
@click.option("--strict", is_flag=True, help="Refuse to write an int8 file that drops more than --max-drop.")
@click.option("--device-id", default=None, metavar="DEVICE",
              help="From a device-specific checkpoint (`kd device-finetune`), export DEVICE's model (one file per "
                   "device; default: the general model).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--log-to", "log_to", default=None, metavar="RUN_ID",
              help="Also log the file as an MLflow ONNX model of that run (the `kd distill` run of the checkpoint).")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI of --log-to (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
def export_cmd(checkpoint, out_path, frontend, seconds, quantize, calibration, calibration_clips, check_clips, max_drop,
               qat_epochs, strict, device_id, as_json, log_to, tracking_uri) -> None:
    """Export a student checkpoint as one ONNX file (float32 or int8), checked against PyTorch before it is written.

    The file carries its class names, sample rate, clip length, frame rate (SED) and the checkpoint's sha256 as ONNX
    metadata; `kd eval` and `kd predict` run it with ONNX Runtime, `kd complexity` reports its parameter memory.
    With --log-to RUN_ID the file joins the run's models in MLflow.
    """
    try:  # onnx, onnxruntime and onnxscript come with the optional [export] extra
        from kd.deploy.config import ExportConfig
        from kd.deploy.export import export_student
    except ModuleNotFoundError as e:
        raise KdError(f"kd export needs the export extra: pip install 'kd-audio[export]' (no {e.name})") from None

    cfg = ExportConfig(checkpoint=checkpoint, out=out_path, frontend=frontend, seconds=seconds, quantize=quantize,
                       calibration=calibration, calibration_clips=calibration_clips, check_clips=check_clips,
                       max_drop=max_drop, qat_epochs=qat_epochs, strict=strict, device_id=device_id)
    with console.status("exporting") as status:
        result = export_student(cfg, on_step=lambda message: status.update(message))
        if log_to:
            from kd.track.tracking import log_onnx_model

            status.update(f"logging {result.path} to MLflow run {log_to}")
            model_uri = log_onnx_model(log_to, result.path, tracking_uri)
    if as_json:
        print_json(result.to_dict() | ({"mlflow_model": model_uri} if log_to else {}))
        return
    meta, cost = result.metadata, result.complexity
    table = Table(show_header=False, title=f"kd export: {escape(result.path)}", title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    device_model = "" if meta["device_id"] == "none" else f", device {meta['device_id']}'s parameters"
    table.add_row("student", f"{meta['student']} ({meta['task']}, {meta['num_classes']} classes{device_model})")
    table.add_row("input", escape(meta["input_shape"].split(": ", 1)[1]))
    table.add_row("file size", f"{result.bytes:,} bytes")
    table.add_row("float32 parity", f"max |logit difference| vs PyTorch {result.parity:.2e} "
                                    f"({escape(result.parity_inputs)})")
    table.add_row("  network / frontend", f"{result.network_parity:.2e} (logits) / " + (
        "-" if result.frontend_parity is None else f"{result.frontend_parity:.2e} (spectrogram)"))
    if result.torch_vs_exact is not None:
        table.add_row("  PyTorch vs exact", f"{result.torch_vs_exact:.2e} (float32 vs float64 frontend)")
    if result.quantization is not None:
        q = result.quantization
        verdict = "[green]ok[/]" if q.drop <= max_drop else f"[bold red]more than {max_drop}[/]"
        table.add_row("quantisation", f"{q.recipe}; {q.method}")
        table.add_row(f"{q.metric}, {q.check_clips} eval clips",
                      f"float32 {q.float32:.4f}, int8 {q.int8:.4f}: drop {q.drop:+.4f} ({verdict})" + (
                          "" if q.post_training_int8 is None else f"; post-training int8 was {q.post_training_int8:.4f}"))
        faster = "int8 is the faster file here" if q.int8_ms < q.float32_ms else \
            "[yellow]float32 is the faster file on this machine[/]"
        table.add_row("latency, one clip, one thread", f"float32 {q.float32_ms:.2f} ms, int8 {q.int8_ms:.2f} ms: {faster}")
    table.add_row("parameter memory", f"{cost.param_bytes:,} bytes ({cost.param_bytes / 1024:,.1f} KiB)")
    table.add_row("DCASE'23 limits", _dcase_verdict(cost.dcase23))
    table.add_row("checkpoint sha256", meta["checkpoint_sha256"])
    if log_to:
        table.add_row("MLflow model", model_uri)
    out.print(table)


@main.group("store")
def store_group() -> None:
    """Inspect and check logit stores."""


@store_group.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def store_info(store, as_json) -> None:
    """Clips, teachers, shapes, codec, bytes on disk, bytes per logit and fraction done of STORE."""
    from logit_store import LogitStore

    info = LogitStore.open(store).info()
    if as_json:
        print_json(info)
        return
    head = Table("", "", show_header=False, title=f"logit store {info['url']}")
    head.add_row("dataset", f"{info['dataset']} ({info['dataset_fingerprint'][:12]})")
    head.add_row("clips / classes", f"{info['clips']} / {info['classes']}")
    head.add_row("chunks", f"{info['num_chunks']} of {info['chunk_size']} clips")
    head.add_row("bytes on disk", f"{info['bytes_on_disk'] / 1e6:.2f} MB")
    head.add_row("format version", str(info["format_version"]))
    if info.get("views"):
        views = info["views"]
        ir = f", impulse responses sha256 {views['ir_fingerprint'][:12]}" if views.get("ir_fingerprint") else ""
        head.add_row("views per clip", f"{views['count']} (view 0 clean; {', '.join(views['kinds'] or [])}{ir})")
    out.print(head)
    table = Table("teacher", "codec", "shapes", "frames/s", "done", "failed", "MB", "bytes/logit", "quality")
    table.columns[0].no_wrap = True
    for name, t in info["teachers"].items():
        shapes = ", ".join(f"{k} {list(v)}" for k, v in t["shapes"].items())
        quality = "  ".join(f"{k} {v:.3f}" for k, v in (t.get("metrics") or {}).items() if not k.startswith("acc_"))
        bpl = "-" if t["bytes_per_logit"] is None else f"{t['bytes_per_logit']:.3f}"
        table.add_row(name, t["codec"], shapes, str(t["frames_per_second"] or "-"), f"{t['fraction_done']:.0%}",
                      str(t["failed_clips"]), f"{t['bytes_on_disk'] / 1e6:.2f}", bpl, quality)
    out.print(table)


@store_group.command("verify")
@click.argument("store")
def store_verify(store) -> None:
    """Check STORE: missing or corrupt chunks, NaN/inf, shapes and class counts. Exit code 1 when anything is wrong."""
    from logit_store import LogitStore

    problems = LogitStore.open(store).verify()
    for problem in problems:
        out.print(f"[red]✗ {problem.kind}[/] {problem}", highlight=False)
    if problems:
        console.print(f"[bold red]{len(problems)} problem(s) in {store}[/]", highlight=False)
        sys.exit(1)
    out.print(f"[green]✓[/] {store} is complete and readable")


@main.command("quickstart")
@click.option("--out", default="kd-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo data, teachers, store, students and the MLflow database.")
@click.option("--task", type=click.Choice(TASK_NAMES), default="asc", show_default=True)
@click.option("--clips", type=int, default=None,
              help="Demo clips (default: asc 420 train + 600 eval, so that the table's differences are measurable; "
                   "tagging 400, sed 300).")
@click.option("--teacher-epochs", type=int, default=None,
              help="Teacher epochs (default: asc 4, fine-tuning the pretrained demo teachers; tagging/sed 8, from "
                   "scratch).")
@click.option("--student-epochs", type=int, default=None,
              help="Student epochs (default: asc 24, long enough for distillation to pay; tagging/sed 10).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else OUT/mlflow.db).")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty OUT.")
def quickstart_cmd(**options) -> None:
    """The whole pipeline on built-in demo data: fine-tune the teachers, teach them into one store, distil one student
    from each teacher, from their ensemble and from labels alone, and compare the runs.

    ASC starts from the pretrained demo teachers that ship with kd (a PaSST, an AST and a CP-ResNet, as real work
    starts from released checkpoints); tagging and SED train two teachers from scratch.
    """
    from kd.demo.quickstart import QuickstartConfig, quickstart

    cfg = QuickstartConfig(**options)
    with TrainingProgress() as bar:
        result = quickstart(cfg, on_step=lambda m: console.rule(f"[bold]{m}"), on_epoch=bar.on_epoch,
                            on_batch=bar.on_batch)
    _print_teach_summary(result.teach)
    table = Table("student run", result.runs["no teacher"].metric, "params", "MMACs", "MLflow run",
                  title=f"{result.student} on {result.dataset}")
    for label, run in result.runs.items():
        table.add_row(label, f"{run.best:.4f}", f"{run.params:,}", f"{run.macs / 1e6:.2f}", run.run_id)
    out.print(table)
    _print_comparison(result.compare)
    out.print(f"The table as a figure: {result.figure}", highlight=False, soft_wrap=True)
    out.print(f"Compare the runs in MLflow:\n  {result.mlflow_ui}\nthen open http://127.0.0.1:5000 and pick "
              "\"Model training\" in the sidebar (MLflow 3 opens on its GenAI view)", highlight=False, soft_wrap=True)


@main.command("compare")
@click.argument("experiments", nargs=-1, metavar="[EXPERIMENT]...")
@click.option("--run", "run_ids", multiple=True, metavar="RUN_ID", help="Compare exactly these runs (repeat).")
@click.option("--by", multiple=True, metavar="PARAM",
              help="A parameter whose values join the teacher set in the columns (e.g. kd_lambda; repeat).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Also write the table as a figure.")
@click.option("--log/--no-log", default=True, show_default=True,
              help="Log the table (figure and JSON) as a run of the MLflow experiment `compare`.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def compare_cmd(experiments, run_ids, by, plot, log, tracking_uri, as_json) -> None:
    """Which teacher choice gives the best student: students as rows, teacher sets as columns, each cell the student's
    best primary metric (mean ± standard deviation over seeds where runs repeat), with parameters and MACs.

    EXPERIMENT: MLflow experiments to read (default: every distill/* experiment).
    """
    from kd.track.compare import compare_runs, plot_comparison, record_comparison

    table = compare_runs(experiments, run_ids=run_ids, by=by, tracking_uri=tracking_uri)
    run_id = record_comparison(table, tracking_uri) if log else None
    path = plot_comparison(table, plot) if plot else None
    if as_json:
        print_json(table.to_dict() | {"mlflow_run": run_id, "plot": path and str(path)})
        return
    _print_comparison(table)
    if path:
        out.print(f"figure: {path}", highlight=False)
    if run_id:
        out.print(f"logged as MLflow run {run_id} (experiment compare: teacher_choice.png, teacher_choice.json)",
                  highlight=False)


def _print_comparison(table) -> None:
    """The teacher-choice table: the best cell of each row in bold green, notes on cells that mix choices."""
    several = len({r.metric for r in table.rows}) > 1
    grid = Table("student", *(["metric"] if several else []), "params", "MMACs",
                 *(("labels only" if c.split(" | ")[0] == "none" else f"from {c}") for c in table.columns),
                 title=f"teacher choice: {', '.join(table.experiments)}"
                       + ("" if several else f" (best {table.rows[0].metric})"), title_justify="left")
    notes = []
    for row in table.rows:
        best = table.best_column(row)
        cells = []
        for column in table.columns:
            cell = table.cell(row, column)
            text = "-" if cell is None else str(cell)
            cells.append(f"[bold green]{text}[/]" if column == best else text)
            if cell is not None and cell.varying:
                notes.append(f"{row.label}, {column}: its {cell.n} runs differ in {', '.join(cell.varying)} "
                             f"(--by {cell.varying[0]} splits them)")
        grid.add_row(row.label, *([row.metric] if several else []),
                     "-" if row.params is None else f"{row.params:,.0f}",
                     "-" if row.macs is None else f"{row.macs / 1e6:,.2f}", *cells)
    out.print(grid)
    for note in notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


@main.command("sweep")
@click.option("--dataset", required=True, metavar="FORMAT:PATH")
@click.option("--store", default=None, metavar="URL", help="The store the teacher choices read (kd teach).")
@click.option("--teachers", required=True, metavar="CHOICE[,CHOICE...]",
              help="Teacher choices: a stored teacher, an ensemble joined by + (passt+ast), or none (labels alone).")
@click.option("--students", required=True, metavar="NAME[,NAME...]", help="Registered students (kd students).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per cell: FIRST..FIRST+N-1.")
@click.option("--first-seed", type=int, default=0, show_default=True,
              help="The cells' first seed (a later sweep with --first-seed 3 adds seeds 3, 4, ... to the same --out).")
@click.option("--set", "settings", multiple=True, metavar="KEY=V1,V2",
              help="Also sweep a kd distill option (repeat): --set kd_lambda=0.02,0.1 --set temperature=1,2.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--eval-every", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: kd distill's).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="A folder per point (its checkpoints and point.json once finished).")
@click.option("--parallel", type=int, default=1, show_default=True,
              help="Points at once, on a local dask cluster (one GPU each where there are GPUs).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run the points on this dask scheduler's workers (those started with --resources GPU=1 each "
                   "take one point at a time).")
@click.option("--device", default="auto", show_default=True)
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else OUT/mlflow.db).")
@click.option("--resume", is_flag=True, help="Continue interrupted points from their last.pt (else they start again).")
def sweep_cmd(dataset, store, teachers, students, seeds, first_seed, settings, epochs, eval_every, batch_size, lr, out,
              parallel, scheduler, device, tracking_uri, resume) -> None:
    """A grid of kd distill runs (students x teacher choices x seeds x --set values), each point skipped once
    finished, so a rerun finishes a stopped sweep; ends with the kd compare table (mean ± std over seeds), and files
    the runs under one MLflow parent run."""
    from kd.sweep.grid import SweepCallbacks, SweepConfig, sweep

    swept = []
    for item in settings:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise KdError(f"--set {item!r}: write KEY=VALUE[,VALUE...]")
        swept.append((key.strip(), tuple(v.strip() for v in values.split(","))))
    options = {"epochs": epochs, "eval_every": eval_every, "batch_size": batch_size, **({"lr": lr} if lr else {})}
    cfg = SweepConfig(dataset, out, tuple(s.strip() for s in students.split(",")),
                      tuple(t.strip() for t in teachers.split(",")), store=store, seeds=seeds, first_seed=first_seed,
                      settings=tuple(swept), options=options, parallel=parallel, scheduler=scheduler, device=device,
                      tracking_uri=tracking_uri, resume=resume)
    with TrainingProgress() as bar:
        result = sweep(cfg, SweepCallbacks(
            on_start=lambda point: console.rule(f"[bold]{point.name}"),
            on_point=lambda point, record: console.print(
                f"finished {point.name}: best {record.metric} {record.best:.4f}", highlight=False),
            on_epoch=bar.on_epoch, on_batch=bar.on_batch))
    console.print(f"{len(result.ran)} of {len(result.points)} points ran now; all runs under MLflow run "
                  f"{result.parent_run_id}", highlight=False)
    _print_comparison(result.table)


@main.command("students")
@click.argument("pattern", required=False)
def list_students_cmd(pattern) -> None:
    """List the registered students with their parameters and MACs for their usual input length."""
    from kd.core.complexity import complexity
    from students import list_students, student_cfg

    table = Table("student", "task", "input", "params", "MMACs", "published", "paper")
    table.columns[0].no_wrap = True
    for name in list_students(pattern):
        cfg = student_cfg(name)
        cost = complexity(name, seconds=cfg.get("input_seconds"))
        pub = cfg.get("published") or {}
        published = f"{pub['params_m']} M / {pub['gmacs']} G" if pub.get("params_m") else "-"
        table.add_row(name, cfg.get("task", "-"), f"{cost.seconds:g} s", f"{cost.params:,}", f"{cost.macs / 1e6:,.1f}",
                      published, cfg.get("paper", "-"))
    out.print(table)


@main.command("complexity")
@click.argument("target", metavar="STUDENT|MODEL.onnx")
@click.option("--seconds", type=float, default=None,
              help="Audio length of one inference (default: the model's usual, or the length the file was exported for).")
@click.option("--classes", "num_classes", type=int, default=None, help="Number of classes (default: the model's).")
@click.option("--bits", "precision_bits", type=int, default=32, show_default=True,
              help="Parameter precision of a registered student for its memory figure (8 for a quantised model).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (params and macs as plain counts).")
def complexity_cmd(target, seconds, num_classes, precision_bits, as_json) -> None:
    """Parameters, parameter memory and multiply-accumulates of one inference (frontend excluded, as the papers
    count), with the DCASE'23 Task 1 limits checked: of a registered STUDENT, or of a file written by `kd export`."""
    from kd.core.complexity import complexity, exported_complexity

    if target.lower().endswith(".onnx"):
        _print_exported_complexity(exported_complexity(target, seconds=seconds), as_json)
        return
    cost = complexity(target, seconds=seconds, num_classes=num_classes, precision_bits=precision_bits)
    if as_json:
        click.echo(json.dumps(cost.to_dict(), sort_keys=True))
        return
    table = Table("", "", show_header=False, title=f"{target}, {cost.seconds:g} s of audio")
    table.add_row("parameters", f"{cost.params:,}")
    table.add_row("multiply-accumulates", f"{cost.macs:,} ({cost.macs / 1e6:,.2f} M)")
    for dtype, nbytes in cost.param_bytes_by_dtype.items():
        table.add_row(f"parameter memory as {dtype}", f"{nbytes:,} bytes ({nbytes / 1024:,.1f} KiB)")
    if precision_bits not in (32, 16, 8):
        table.add_row(f"parameter memory ({precision_bits}-bit)", f"{cost.param_bytes / 1024:,.1f} KiB")
    for kind, macs in cost.macs_by_kind.items():
        table.add_row(f"  MACs in {kind}", f"{macs:,}")
    table.add_row(f"DCASE'23 limits ({precision_bits}-bit)", _dcase_verdict(cost.dcase23))
    out.print(table)


def _dcase_verdict(check: dict) -> str:
    memory = "within" if check["param_bytes_ok"] else "OVER"
    macs = "within" if check["macs_per_second_ok"] else "OVER"
    return (f"parameters {check['param_bytes']:,} of {check['param_bytes_limit']:,} bytes ({memory}); "
            f"{check['macs_per_second'] / 1e6:,.2f} of {check['macs_per_second_limit'] / 1e6:g} MMACs/s ({macs})")


def _print_exported_complexity(cost, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(cost.to_dict(), sort_keys=True))
        return
    table = Table("", "", show_header=False, title=f"{cost.path}: {cost.student}, {cost.seconds:g} s of audio")
    table.add_row("quantisation", cost.quantization)
    table.add_row("parameters (BatchNorm folded)", f"{cost.params:,}")
    for dtype, nbytes in cost.stored_bytes.items():
        table.add_row(f"  stored as {dtype}", f"{nbytes:,} bytes")
    table.add_row("parameter memory (challenge rule)", f"{cost.param_bytes:,} bytes ({cost.param_bytes / 1024:,.1f} KiB)")
    table.add_row("quantisation scales and zero points", f"{cost.quantization_bytes:,} bytes")
    table.add_row("frontend constants (window, mel banks)", f"{cost.frontend_bytes:,} bytes")
    table.add_row("file size", f"{cost.file_bytes:,} bytes")
    table.add_row("multiply-accumulates", f"{cost.macs:,} ({cost.macs / 1e6:,.2f} M)")
    table.add_row("DCASE'23 limits", _dcase_verdict(cost.dcase23))
    out.print(table)


def _meta_device():
    import torch

    return torch.device("meta")


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
