"""MLflow tracking writes what the compare view needs."""
import pytest

from kd.tracking import flatten_params, tracked_run


def test_flatten_params_uses_dotted_names():
    assert flatten_params({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]"}


def test_tracked_run_logs_params_metrics_and_marks_failures(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracked_run("unit", run_name="ok", params={"student": {"name": "mn04"}}, tags={"store": "x"},
                     tracking_uri=uri) as run:
        run.log_metrics({"acc/a": 0.5, "loss": 1.0}, step=0)
        ok_id = run.run_id
    with pytest.raises(RuntimeError):
        with tracked_run("unit", run_name="bad", tracking_uri=uri) as run:
            bad_id = run.run_id
            raise RuntimeError("boom")
    client = mlflow.MlflowClient(uri)
    ok = client.get_run(ok_id)
    assert ok.data.params["student.name"] == "mn04" and ok.data.tags["store"] == "x"
    assert ok.data.metrics["acc/a"] == 0.5 and ok.info.status == "FINISHED"
    assert client.get_run(bad_id).info.status == "FAILED"
