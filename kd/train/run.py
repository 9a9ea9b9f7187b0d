"""A training run of ``kd distill`` or ``kd train-teacher``, top to bottom: the job is built
(:func:`kd.train.job.build_job`), then :func:`run_job` trains it (:func:`kd.train.job.train`), evaluates the best
checkpoint (:func:`kd.train.job.evaluate_best`) and reports it (:func:`kd.train.report.report`), all in one MLflow run.
"""
from __future__ import annotations

from pathlib import Path

from kd.track.tracking import tracked_run
from kd.train.job import BatchCallback, EpochCallback, TrainingJob, TrainingResult, evaluate_best, train

__all__ = ["run_job"]


def run_job(job: TrainingJob, on_epoch: EpochCallback | None = None,
            on_batch: BatchCallback | None = None) -> TrainingResult:
    """Run a built job (:func:`build_job`) in one MLflow run (tracked from rank 0 only): :func:`train`, then, on
    rank 0, :func:`evaluate_best` and :func:`kd.train.report.report` on the checkpoint it hands on: the best epoch's,
    or with checkpoint averaging the averaged one.

    ``on_epoch(epoch, metrics)`` follows each epoch (with the eval metrics after an evaluation),
    ``on_batch(done, batches_per_epoch)`` each step.
    """
    trainer, options = job.trainer, job.options
    main = trainer.dist.is_main
    with tracked_run(job.experiment, run_name=job.run_name, params=job.params, tags=job.tags,
                     tracking_uri=options.tracking_uri, enabled=main) as run:
        run.log_inputs(job.inputs)
        history = train(job, run, on_epoch, on_batch)
        best = Path(options.out) / ("averaged.pt" if trainer.cfg.average_from else "best.pt")
        if main and best.is_file():
            run.log_artifact(best, "checkpoint")
            run.log_metrics({f"best_{job.task.primary_metric}": trainer.best})
            if trainer.averaged_metrics:
                run.log_metrics({f"averaged_{k}": v for k, v in trainer.averaged_metrics.items()})
            from kd.train.report import report  # matplotlib: loaded by the process that reports, not by every rank

            report(job, run, evaluate_best(job, best))
        return TrainingResult(str(best), job.task.primary_metric, trainer.best, history, run.run_id, main, job.cost,
                              trainer.averaged_metrics)
