"""MLflow tracking: the one module that imports mlflow.

Every ``kd teach``, ``kd train-teacher`` and ``kd distill`` run goes through :func:`tracked_run`. Tracking
goes where MLflow sends it by default (MLflow 3: a SQLite database ``mlflow.db`` in the working
directory, which a plain ``mlflow ui`` started in the same folder shows), unless ``tracking_uri`` or the
``MLFLOW_TRACKING_URI`` environment variable says otherwise. Parameters are flattened to dotted names so
that MLflow's compare view lines up runs key by key.

mlflow takes over a second to import; it is imported when a run starts, because the modules that track
(``kd.teach``, ``kd.job``) are also imported by dask and DataLoader worker processes that never do.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["NullRunLogger", "RunLogger", "flatten_params", "tracked_run"]

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1, 2]"}``, values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_CHARS]
    return flat


class RunLogger:
    """What a training or teaching loop needs from a tracking run (the active run of the ``mlflow`` module given)."""

    def __init__(self, run: Any, mlflow: Any) -> None:
        self._run, self._mlflow = run, mlflow

    @property
    def run_id(self) -> str:
        return self._run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {_metric_name(k): float(v) for k, v in metrics.items() if v is not None}
        self._mlflow.log_metrics(clean, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow.log_params(flatten_params(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)


class NullRunLogger(RunLogger):
    """The logger of a process that does not track: the non-zero ranks of a ``torchrun`` job."""

    def __init__(self) -> None:
        super().__init__(None, None)

    @property
    def run_id(self) -> str | None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass


def _metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits and ``_-. /``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


@contextmanager
def tracked_run(
    experiment: str,
    *,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    enabled: bool = True,
) -> Iterator[RunLogger]:
    """Open an MLflow run in ``experiment`` (created if needed), log ``params`` and ``tags``, yield a logger.

    A run that raises is marked FAILED (KeyboardInterrupt: KILLED), so interrupted runs are visible as such.
    ``enabled=False`` yields a logger that records nothing (one MLflow run per job, not one per process).
    """
    if not enabled:
        yield NullRunLogger()
        return
    import mlflow

    for noisy in ("alembic", "mlflow"):  # database migrations and "creating experiment" chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    elif not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        logger = RunLogger(run, mlflow)
        if params:
            logger.log_params(params)
        if tags:
            logger.set_tags(tags)
        try:
            yield logger
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
