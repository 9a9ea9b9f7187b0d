"""MLflow tracking: the one module that imports mlflow.

Every ``kd teach``, ``kd train-teacher`` and ``kd distill`` run goes through :func:`tracked_run`. Tracking
goes where MLflow sends it by default (MLflow 3: a SQLite database ``mlflow.db`` in the working
directory, which a plain ``mlflow ui`` started in the same folder shows), unless ``tracking_uri`` or the
``MLFLOW_TRACKING_URI`` environment variable says otherwise. Parameters are flattened to dotted names so
that MLflow's compare view lines up runs key by key.

What a run records besides parameters and metrics:

* **datasets** (:class:`DatasetInput`, MLflow's dataset tracking: the runs table's Dataset column): the splits a
  run trained and evaluated on, its transfer sets and the logit store it read or wrote, each with a digest (the
  first ``DIGEST_CHARS`` hex digits of the dataset's fingerprint, or of the store's identity), so that runs on
  the same data group together;
* **figures** (:mod:`kd.evaluate.figures`) as PNG artifacts;
* **models**: a distilled student as an MLflow model (PyTorch flavour, pickled, with a waveform input example
  and a signature: ``mlflow.pyfunc.load_model(uri).predict(waveforms)`` returns logits) and, once exported,
  its ONNX file (:func:`log_onnx_model`).

:func:`find_runs` reads runs back for ``kd compare``.

mlflow takes over a second to import; it is imported when a run starts, because the modules that track
(``kd.teach``, ``kd.train.job``) are also imported by dask and DataLoader worker processes that never do.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_errors import KdError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

    from kd.data import Dataset
    from logit_store import LogitStore

__all__ = [
    "DIGEST_CHARS",
    "DatasetInput",
    "NullRunLogger",
    "RunLogger",
    "RunRecord",
    "find_runs",
    "flatten_params",
    "init_tracking",
    "log_onnx_model",
    "resolve_tracking_uri",
    "set_parent_run",
    "tracked_run",
]

_MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
DIGEST_CHARS = 12  # of a fingerprint, as a dataset's digest (MLflow allows 36 characters; its own digests take 8-10)
_CONTEXT_TAG = "mlflow.data.context"  # the input tag MLflow's runs table shows beside a dataset


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


def resolve_tracking_uri(tracking_uri: str | None = None, folder: Path | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` in ``folder`` (default: the working
    directory; SQLite, as MLflow 3 defaults to)."""
    default = f"sqlite:///{(folder or Path.cwd()) / 'mlflow.db'}"
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default


def _mlflow(tracking_uri: str | None):
    """The mlflow module, pointed at ``tracking_uri`` (see :func:`resolve_tracking_uri`) and quiet."""
    import mlflow

    for noisy in ("alembic", "mlflow"):  # database migrations and "creating experiment" chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    # MLflow also exports the URI to the environment; a later call without a URI must still mean the user's default.
    if user_setting is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_setting
    return mlflow


# --- datasets ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run used (or, for ``kd teach``'s store, wrote), as MLflow's dataset tracking records it.

    Attributes:
        name: what the runs table shows (``demo-asc/train``, ``logits:store.zarr``).
        digest: the first ``DIGEST_CHARS`` hex digits of ``fingerprint``.
        source: ``FORMAT:PATH`` of a dataset, the URL of a store.
        context: the part it played (``train``, ``eval``, ``transfer``, ``teacher logits``, ``taught``, ``written``).
        profile: clip count and the rest a user checks (shown with the dataset in MLflow).
    """

    name: str
    fingerprint: str
    source: str
    context: str
    profile: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.fingerprint[:DIGEST_CHARS]

    @classmethod
    def of_dataset(cls, data: Dataset, context: str, clips: int | None = None) -> DatasetInput:
        """A split of a dataset; ``clips``: how many of its clips the run used, where not all."""
        profile = {"clips": len(data.clips), "classes": len(data.classes), "split": data.split,
                   "task": str(data.task) if data.task else None, "fingerprint": data.fingerprint()}
        if clips is not None and clips != len(data.clips):
            profile["clips_used"] = clips
        name = f"{data.name}/{data.split}" if data.split else data.name
        return cls(name, data.fingerprint(), data.spec, context, profile)

    @classmethod
    def of_store(cls, store: LogitStore, context: str) -> DatasetInput:
        """A logit store, identified by the dataset it was taught on and its teachers (checkpoints and codecs)."""
        meta = store.meta
        teachers = {name: store.teacher_info(name) for name in store.teachers}
        identity = {"dataset_fingerprint": meta.get("dataset_fingerprint"), "views": meta.get("views"),
                    "teachers": {n: [t.get("checkpoint_sha256"), t.get("codec")] for n, t in sorted(teachers.items())}}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        codecs = sorted({str(t.get("codec")) for t in teachers.values()})
        profile = {"clips": store.num_clips, "classes": len(store.classes), "views": store.num_views,
                   "teachers": ",".join(teachers), "codecs": ",".join(codecs), "dataset": meta.get("dataset"),
                   "dataset_fingerprint": meta.get("dataset_fingerprint")}
        name = f"logits:{store.url.rstrip('/').rsplit('/', 1)[-1]}"
        return cls(name, fingerprint, store.url, context, profile)

    def source_json(self) -> tuple[str, str]:
        """MLflow's source type and source JSON: ``s3`` or ``local``, the URI its UI shows, and the spec."""
        spec = self.source
        location = spec.split(":", 1)[1] if ":" in spec and "://" not in spec else spec
        source_type = "s3" if location.startswith("s3://") else "local"
        return source_type, json.dumps({"uri": location, "spec": spec})


# --- runs ----------------------------------------------------------------------------------------------------------
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
        self._mlflow.set_tags(flatten_params(tags))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_inputs(self, inputs: Sequence[DatasetInput]) -> None:
        """Record ``inputs`` with MLflow's dataset tracking (the runs table's Dataset column)."""
        from mlflow.entities import Dataset, InputTag
        from mlflow.entities import DatasetInput as MlflowInput

        records = []
        for item in inputs:
            source_type, source = item.source_json()
            dataset = Dataset(name=item.name, digest=item.digest, source_type=source_type, source=source,
                              profile=json.dumps(dict(item.profile), default=str))
            records.append(MlflowInput(dataset, tags=[InputTag(_CONTEXT_TAG, item.context)]))
        if not records:
            return
        client = self._mlflow.MlflowClient()
        for attempt in range(3):
            try:
                client.log_inputs(self.run_id, datasets=records)
                return
            except self._mlflow.exceptions.MlflowException as e:
                # runs of parallel processes (kd sweep --parallel) record the same dataset: MLflow's SQL store
                # looks it up, then inserts it, and the slower insert fails; again, the lookup finds it
                if "UNIQUE constraint failed" not in str(e) or attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        self._mlflow.log_figure(figure, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._mlflow.log_dict(dict(data), artifact_file)

    def log_model(self, model: nn.Module, example: np.ndarray, output: np.ndarray, name: str = "student") -> str:
        """Log ``model`` (on the CPU, in eval mode) as an MLflow PyTorch model that takes waveforms; its URI.

        ``example``: float32 waveforms ``[B, samples]``; ``output``: the model's output on them (``[B, C]`` or
        ``[B, T, C]``). Batch, length and frames are variable in the signature. The model is pickled (MLflow's
        ``pt2`` format traces it with ``torch.export``, which takes several seconds per student); loading it needs
        kd installed, as the pip requirements say.
        """
        import mlflow.pytorch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        output_shape = (-1,) + (-1,) * (output.ndim - 2) + (output.shape[-1],)
        # unnamed tensors: the PyTorch flavour feeds the model one array (named ones arrive as a dict)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), output_shape)]))
        pytorch_log = logging.getLogger("mlflow.pytorch")
        level = pytorch_log.level
        pytorch_log.setLevel(logging.ERROR)  # its warning about pickles: kd's own checkpoints are pickles too
        try:
            info = mlflow.pytorch.log_model(model, name=name, signature=signature, input_example=example,
                                            serialization_format="pickle", pip_requirements=_requirements("torch"))
        finally:
            pytorch_log.setLevel(level)
        return info.model_uri


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

    def log_inputs(self, inputs: Sequence[DatasetInput]) -> None:
        pass

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        pass

    def log_model(self, model: nn.Module, example: np.ndarray, output: np.ndarray, name: str = "student") -> str:
        return ""


def _metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits and ``_-. /``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def _requirements(*packages: str) -> list[str]:
    """Pinned pip requirements of a logged model: ``packages`` and kd itself, at the installed versions."""
    pins = []
    for package in (*packages, "kd-audio"):
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(package)
    return pins


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
    mlflow = _mlflow(tracking_uri)
    _set_experiment(mlflow, experiment)
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


def _set_experiment(mlflow: Any, name: str) -> None:
    """Make ``name`` the active experiment. A new one on a SQLite database keeps its artifacts (checkpoints, figures,
    models) in ``mlruns/`` beside the database (MLflow's default, ``./mlruns``, would put them wherever the
    process happens to run), so that a folder like the quick start's holds everything its database refers to."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        folder = Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns"
        try:
            mlflow.create_experiment(name, artifact_location=(folder / name).as_uri())
        except mlflow.exceptions.MlflowException:  # another process created it meanwhile
            pass
    mlflow.set_experiment(name)


def log_onnx_model(run_id: str, path: str | os.PathLike, tracking_uri: str | None = None,
                   name: str = "student_onnx") -> str:
    """Add an exported ONNX file (``kd export``) to run ``run_id`` as an MLflow ONNX model; its URI.

    The signature comes from the file's graph (its first input, ``waveform`` or ``spectrogram``, and its logits,
    with the dynamic axes variable); the file's metadata (classes, sample rate, ...) becomes the model's metadata.
    """
    import mlflow.onnx
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow = _mlflow(tracking_uri)
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise KdError(f"no MLflow run {run_id} at {resolve_tracking_uri(tracking_uri)}") from None
    model = onnx.load(str(path))

    def spec(value) -> TensorSpec:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
        return TensorSpec(np.dtype(np.float32), dims, value.name)

    signature = ModelSignature(inputs=Schema([spec(model.graph.input[0])]),
                               outputs=Schema([spec(o) for o in model.graph.output]))
    metadata = {p.key: p.value for p in model.metadata_props}
    mlflow.set_experiment(experiment_id=run.info.experiment_id)  # start_run(run_id) resumes only in its experiment
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(model, name=name, signature=signature, metadata=metadata,
                                     pip_requirements=_requirements("onnx", "onnxruntime"))
    return info.model_uri


# --- reading runs back (kd compare) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """A finished run as ``kd compare`` reads it."""

    run_id: str
    run_name: str
    experiment: str
    params: Mapping[str, str]
    tags: Mapping[str, str]
    metrics: Mapping[str, float]


def init_tracking(tracking_uri: str | None = None) -> None:
    """Create the tracking database's tables now: processes that open a new SQLite database at the same moment
    would each run its migrations and collide."""
    _mlflow(tracking_uri).MlflowClient().search_experiments(max_results=1)


def set_parent_run(run_id: str, parent_run_id: str, tracking_uri: str | None = None) -> None:
    """Make ``run_id`` a child of ``parent_run_id`` (MLflow's nesting tag): the UI shows it under its parent."""
    _mlflow(tracking_uri).MlflowClient().set_tag(run_id, "mlflow.parentRunId", parent_run_id)


def find_runs(experiments: Sequence[str] = (), *, prefix: str = "distill/", run_ids: Sequence[str] = (),
              tracking_uri: str | None = None) -> list[RunRecord]:
    """The finished runs of ``experiments`` (by name; none given: every experiment whose name starts with
    ``prefix``), or exactly the runs ``run_ids``.

    Raises:
        KdError: an experiment or run that the tracking server does not have, or no experiment at all.
    """
    mlflow = _mlflow(tracking_uri)
    client = mlflow.MlflowClient()
    uri = resolve_tracking_uri(tracking_uri)
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except mlflow.exceptions.MlflowException:
                raise KdError(f"no MLflow run {run_id} at {uri}") from None
        names = {r.info.experiment_id: client.get_experiment(r.info.experiment_id).name for r in runs}
    else:
        if experiments:
            found = {name: client.get_experiment_by_name(name) for name in experiments}
            missing = [name for name, e in found.items() if e is None]
            if missing:
                known = ", ".join(e.name for e in client.search_experiments()) or "none"
                raise KdError(f"no experiment {', '.join(missing)} at {uri} (experiments: {known})")
            chosen = list(found.values())
        else:
            chosen = [e for e in client.search_experiments() if e.name.startswith(prefix)]
            if not chosen:
                raise KdError(f"no {prefix}* experiment at {uri}: distil first, or name the experiments")
        names = {e.experiment_id: e.name for e in chosen}
        runs = client.search_runs(list(names), filter_string="attributes.status = 'FINISHED'", max_results=50000)
    return [RunRecord(r.info.run_id, r.info.run_name, names[r.info.experiment_id], dict(r.data.params),
                      dict(r.data.tags), dict(r.data.metrics))
            for r in runs if r.info.status == "FINISHED"]
