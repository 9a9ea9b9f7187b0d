"""MLflow tracking writes what the compare view needs."""
import pytest

from kd.track.tracking import flatten_params, tracked_run


def test_flatten_params_uses_dotted_names():
    assert flatten_params({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]"}


def test_tracked_run_logs_params_metrics_and_marks_failures(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracked_run("unit", run_name="ok", params={"student": {"name": "mn04"}}, tags={"store": "x"},
                     tracking_uri=uri) as run:
        run.log_metrics({"acc/a": 0.5, "loss": 1.0}, step=0)
        ok_id = run.run_id
    with pytest.raises(RuntimeError), tracked_run("unit", run_name="bad", tracking_uri=uri) as run:
        bad_id = run.run_id
        raise RuntimeError("boom")
    client = mlflow.MlflowClient(uri)
    ok = client.get_run(ok_id)
    assert ok.data.params["student.name"] == "mn04" and ok.data.tags["store"] == "x"
    assert ok.data.metrics["acc/a"] == 0.5 and ok.info.status == "FINISHED"
    assert client.get_run(bad_id).info.status == "FAILED"


def test_artifacts_of_a_sqlite_database_stay_beside_it(tmp_path, monkeypatch):
    import mlflow

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    (tmp_path / "db").mkdir()
    (tmp_path / "note.txt").write_text("x")
    with tracked_run("distill/x-asc", tracking_uri=uri) as run:
        run.log_artifact(tmp_path / "note.txt", "checkpoint")
    artifact_uri = mlflow.MlflowClient(uri).get_run(run.run_id).info.artifact_uri
    assert artifact_uri.startswith((tmp_path / "db" / "mlruns" / "distill" / "x-asc").as_uri())
    assert (tmp_path / "db" / "mlruns" / "distill" / "x-asc" / run.run_id / "artifacts" / "checkpoint" /
            "note.txt").is_file()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()


def test_tracking_goes_to_mlflow_tracking_uri_unless_told_otherwise(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    with tracked_run("unit") as run:
        pass
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path / 'env.db'}").get_run(run.run_id)
    assert not (tmp_path / "mlflow.db").exists()


def test_an_explicit_tracking_uri_is_not_the_next_runs_default(tmp_path, monkeypatch):
    """MLflow exports the URI it is pointed at; a later run without one must still go to the user's default."""
    import os

    monkeypatch.chdir(tmp_path)
    with tracked_run("unit", tracking_uri=f"sqlite:///{tmp_path / 'explicit.db'}"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    with tracked_run("unit"):
        pass
    assert (tmp_path / "mlflow.db").exists()


def test_a_dataset_recorded_by_a_parallel_run_meanwhile_is_logged_again(monkeypatch):
    """kd sweep --parallel: two runs insert the same dataset row at once and one insert fails; logging retries, and
    the retry finds the row. Other errors still raise."""
    from types import SimpleNamespace

    import mlflow

    from kd.track.tracking import DatasetInput, RunLogger

    class Client:
        def __init__(self, failures):
            self.failures, self.calls = list(failures), 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.failures:
                raise mlflow.exceptions.MlflowException(self.failures.pop(0))

    monkeypatch.setattr("time.sleep", lambda s: None)
    inputs = [DatasetInput("demo/train", "ab" * 32, "tau22:/d", "train")]
    run = SimpleNamespace(info=SimpleNamespace(run_id="r"))
    raced = Client(["(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id"])
    RunLogger(run, SimpleNamespace(MlflowClient=lambda: raced, exceptions=mlflow.exceptions)).log_inputs(inputs)
    assert raced.calls == 2
    broken = Client(["no such table"])
    with pytest.raises(mlflow.exceptions.MlflowException, match="no such table"):
        RunLogger(run, SimpleNamespace(MlflowClient=lambda: broken, exceptions=mlflow.exceptions)).log_inputs(inputs)
