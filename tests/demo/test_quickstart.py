"""kd quickstart with a reduced budget: every stage runs, the ASC teachers start from the shipped releases, and
MLflow holds the five distillation runs; the hint for distillation runs cut short."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from cli import main
from kd.demo.quickstart import PLANS
from kd.train.distill import patience_hint
from teachers import release_path


@pytest.mark.slow
def test_quickstart_runs_the_whole_pipeline_and_ends_with_the_teacher_choice_table(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setattr("cli.out", Console(width=200))  # rich sized the module's console when cli was imported
    database = tmp_path / "server" / "mlflow.db"  # $MLFLOW_TRACKING_URI wins over OUT/mlflow.db
    database.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    out = tmp_path / "qs"
    result = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--clips", "40", "--teacher-epochs", "1",
                                       "--student-epochs", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert all((out / "teachers" / alias / "best.pt").is_file() for alias in ("passt", "ast", "cpr"))
    assert (out / "store.zarr" / "zarr.json").is_file()
    assert not (out / "mlflow.db").exists() and f"mlflow ui --backend-store-uri sqlite:///{database}" in result.output
    for label in ("from passt", "from ast", "from cpr", "from the ensemble", "no teacher"):
        assert label in result.output

    client = mlflow.MlflowClient(f"sqlite:///{database}")
    runs = client.search_runs([client.get_experiment_by_name("distill/demo-asc-asc").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kd_sweep") == "parent"]  # the students are one kd sweep
    distill_runs = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in distill_runs)
    assert sorted(r.data.params["teachers"] for r in distill_runs) == ["ast", "cpr", "none", "passt", "passt,ast,cpr"]
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in distill_runs)
    best = {r.data.params["teachers"]: r.data.metrics["best_accuracy"] for r in distill_runs}
    table = result.output[result.output.index("teacher choice"):]
    assert "labels only" in table and all(f"{score:.4f}" in table for score in best.values())
    assert (out / "teacher_choice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "teacher_choice.png" in table
    (compared,) = client.search_runs([client.get_experiment_by_name("compare").experiment_id])
    assert "teacher_choice.png" in {a.path for a in client.list_artifacts(compared.info.run_id)}
    assert client.get_experiment_by_name("teach") is not None
    teacher_runs = client.search_runs([client.get_experiment_by_name("train-teacher/demo-asc-asc").experiment_id])
    assert sorted(r.data.params["checkpoint"] for r in teacher_runs) == sorted(
        str(release_path(name)) for name in ("passt_tiny", "ast_tiny", "cp_resnet"))

    if shutil.which("chromium"):  # what the MLflow UI shows of these runs: scripts/mlflow_ui_check.py
        check = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" /
                                                    "mlflow_ui_check.py"), str(database), "--out", str(tmp_path / "ui")],
                               capture_output=True, text=True, check=False, timeout=900)
        assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
        assert json.loads(check.stdout.strip().splitlines()[-1])["runs"] == 5


def test_asc_plan_fine_tunes_the_releases_and_trains_students_patiently():
    plan = PLANS["asc"]
    assert plan.pretrained and plan.student_epochs >= 20
    assert {name for _, name in plan.teachers} == {"passt_tiny", "ast_tiny", "cp_resnet"}  # CP-JKU's mix
    assert not PLANS["tagging"].pretrained and not PLANS["sed"].pretrained  # no demo releases for them


def _history(soft_losses):
    return [{"train_loss": s, "train_soft_loss": s, "accuracy": 0.5} for s in soft_losses]


def test_patience_hint_flags_soft_loss_far_above_where_it_started_to_settle():
    hint = patience_hint(_history([0.40, 0.33, 0.30, 0.28]))
    assert hint is not None and "70%" in hint and "4 epochs" in hint and "--epochs" in hint
    assert patience_hint(_history([0.40, 0.25, 0.15, 0.12, 0.10])) is None
    assert patience_hint([{"train_loss": 1.0, "accuracy": 0.5}] * 5) is None  # labels only: nothing to say
    assert patience_hint(_history([0.4])) is None  # one epoch: no trend to judge
