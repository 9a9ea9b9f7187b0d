"""Shared fixtures: small demo datasets written once per test session (each test copies what it modifies)."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from kd.demo.data import make_demo_data


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its share of the cores: torch's default (every core in every worker)
    oversubscribes the machine, and OpenMP threads that spin waiting for a descheduled peer waste most of it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # scripts the tests start


@pytest.fixture(scope="session")
def demo_asc(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("demo") / "asc", "asc", clips=40, seed=0)


@pytest.fixture(scope="session")
def demo_tagging(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("demo") / "tagging", "tagging", clips=24, seed=0, seconds=1.0)


@pytest.fixture(scope="session")
def demo_sed(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("demo") / "sed", "sed", clips=24, seed=0, seconds=4.0)


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri(monkeypatch):
    """Every test starts without ``$MLFLOW_TRACKING_URI`` (``mlflow.set_tracking_uri`` exports it process-wide)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session", autouse=True)
def migrated_mlflow_databases(tmp_path_factory):
    """A new MLflow SQLite database runs every schema migration first (1-2 s, in each of the many tests that track
    to their own database); here each starts as a copy of one database migrated once per session instead."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    TrackingStore(f"sqlite:///{template}", str(template.parent / "mlruns"))

    def from_template(init):
        def wrapped(self, db_uri, *args, **kwargs):
            path = Path(db_uri.removeprefix("sqlite:///")) if db_uri.startswith("sqlite:///") else None
            if path is not None and not path.exists() and path.parent.is_dir():
                shutil.copyfile(template, path)
            init(self, db_uri, *args, **kwargs)
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        for store in (TrackingStore, RegistryStore):
            patch.setattr(store, "__init__", from_template(store.__init__))
        yield
