"""kd quickstart with a reduced budget: every stage runs and MLflow holds the four distillation runs."""
import pytest
from click.testing import CliRunner

from cli import main

pytestmark = pytest.mark.slow


def test_quickstart_runs_the_whole_pipeline(tmp_path):
    import mlflow

    out = tmp_path / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--clips", "40", "--teacher-epochs", "1",
                                       "--student-epochs", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "teachers" / "passt" / "best.pt").is_file() and (out / "teachers" / "ast" / "best.pt").is_file()
    assert (out / "store.zarr" / "zarr.json").is_file()
    assert "mlflow ui --backend-store-uri" in result.output
    for label in ("from passt", "from ast", "from the ensemble", "no teacher"):
        assert label in result.output
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    distill_runs = client.search_runs([client.get_experiment_by_name("distill/demo-asc-asc").experiment_id])
    assert sorted(r.data.params["teachers"] for r in distill_runs) == ["ast", "none", "passt", "passt,ast"]
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in distill_runs)
    assert client.get_experiment_by_name("teach") is not None
