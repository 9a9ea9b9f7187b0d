"""What a finished training run reports, after training and from the best checkpoint's eval logits
(:class:`kd.train.job.Evaluation`): figures of what the task is scored on (:mod:`kd.evaluate.figures`), for a
distilled student how far it follows its teachers (on the eval clips the store holds, else on training clips), an
event roll for frame-level tasks, and, where the job asks for it, the model as an MLflow model.

Only the process that reports imports this module (and matplotlib with it): :func:`kd.train.run.run_job` imports it
on rank 0 once training is done.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from kd.evaluate import figures
from kd.evaluate.loop import predict
from kd.track.tracking import RunLogger
from kd.train.job import Evaluation, TrainingJob
from kd.train.loaders import ClipDataset, make_dataset, make_loader
from logit_store import LogitStore

__all__ = ["AGREEMENT_CLIPS", "event_roll", "report", "teacher_probe"]

AGREEMENT_CLIPS = 256  # clips on which a distilled student is compared with its teachers


def report(job: TrainingJob, run: RunLogger, scored: Evaluation) -> None:
    """Log figures of the best checkpoint (in ``job.model``) on the eval split (``scored``), its agreement with the
    teachers (distilled runs) and, with ``job.log_model``, the model as an MLflow model taking waveforms."""
    model, device, task = job.model, job.device, job.task
    eval_set, clips, logits = scored.dataset, scored.clips, scored.logits
    for name, figure in figures.evaluation_figures(task, eval_set.data, clips, logits,
                                                   eval_set.frames_per_second).items():
        run.log_figure(figure, f"figures/{name}")
    roll = (eval_set, clips, logits, None, "eval")
    if job.teacher is not None:
        probe, split = teacher_probe(job)
        student, order = probe_logits(probe, scored) if split == "eval" else predict(
            model, make_loader(probe, job.options.batch_size, train=False, decode_workers=job.options.decode_workers),
            device)
        teacher = probe.teacher_logits(probe.ids[order]).float().numpy()
        where = (f"frames of {len(order)} " if task.frame_level else "") + f"{split} clips" + (
            "" if split == "eval" else " (the store holds no eval clip)")
        run.log_figure(figures.agreement_figure(student, teacher, eval_set.data.classes, single_label=task.single_label,
                                                where=where), "figures/teacher_agreement.png")
        roll = (probe, [probe.clips[i] for i in order], student, teacher, split)
    if task.frame_level:
        run.log_figure(event_roll(job, *roll), "figures/event_roll.png")
    if job.log_model:
        one_second = eval_set[0]["audio"][: model.sample_rate]  # any length works; a second keeps the example small
        example = one_second[None].numpy()
        cpu_model = copy.deepcopy(model).cpu().eval()
        with torch.inference_mode():
            output = task.logits(cpu_model(torch.from_numpy(example))).numpy()
        run.log_model(cpu_model, example, output)


def teacher_probe(job: TrainingJob) -> tuple[ClipDataset, str]:
    """Clips to compare a distilled student with its teachers on (clean views): the eval clips the store holds,
    else up to ``AGREEMENT_CLIPS`` training clips spread over the split; and which split they are from."""
    store = LogitStore.open(job.teacher.store_url, mode="r")
    usable = set(store.clip_ids) - set().union(*(store.failures(t) for t in job.teacher.teachers))
    eval_set: ClipDataset = job.eval_loader.dataset
    targets = replace(job.teacher, views="clean")
    held = [c for c in eval_set.clips if c.id in usable]
    train = job.train_set
    data, clips, split = (eval_set.data, held, "eval") if held else (train.data, train.clips, "training")
    clips = clips[:: max(1, len(clips) // AGREEMENT_CLIPS)][:AGREEMENT_CLIPS]
    return make_dataset(data, clips, job.model, eval_set.seconds, teacher=targets), split


def probe_logits(probe: ClipDataset, scored: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    """The student's logits of the probe's eval clips, taken from the evaluation (the same clips, read alike), and
    the probe's indices of the clips they belong to (a clip the evaluation could not decode has none)."""
    rows = {clip.id: i for i, clip in enumerate(scored.clips)}
    order = np.array([i for i, clip in enumerate(probe.clips) if clip.id in rows], dtype=np.int64)
    return scored.logits[[rows[probe.clips[i].id] for i in order]], order


def event_roll(job: TrainingJob, dataset: ClipDataset, clips: Sequence[Any], logits: Any, teacher: Any, split: str):
    """The event roll of the clip with the most labelled events of ``clips`` (of the ``split`` split): its labels,
    the teachers' (``teacher`` None: no teachers' row) and the trained model's probabilities."""
    single = job.task.single_label
    k = max(range(len(clips)), key=lambda i: len(clips[i].events))
    fps = dataset.frames_per_second
    rows = {"labels": dataset.data.frame_targets(clips[k], fps, logits.shape[1])}
    if teacher is not None:
        rows[f"teachers ({','.join(job.teacher.teachers)})"] = figures.probabilities(teacher[k], single)
    rows[job.trainer.meta.get("kind", "model")] = figures.probabilities(logits[k], single)
    return figures.event_roll_figure(rows, dataset.data.classes, fps, f"{split} clip {clips[k].id}")
