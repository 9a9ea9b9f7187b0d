"""Every benchmark runs its ``--quick`` size to the end and prints its figures as one JSON object on its last line;
the scripts in ``scripts/`` run at a small size.

The scripts import library internals (``prepare_distillation``, ``run_teach``, codecs, ...), so a change that
breaks one would otherwise go unnoticed until someone measures again. ``scripts/mlflow_ui_check.py`` runs in the
quick start's test, on the database it writes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))

pytestmark = pytest.mark.slow


def last_json_line(script: Path, *args: str, cwd: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    result = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_quick_run_prints_its_figures(script, tmp_path):
    figures = last_json_line(script, "--quick", cwd=tmp_path)
    assert isinstance(figures, dict) and figures
    assert all(v is None or isinstance(v, (int, float, str, list, dict, bool)) for v in figures.values())


def test_pretraining_script_writes_releases_that_load_strictly(tmp_path):
    from teachers import create_teacher

    out = tmp_path / "releases"
    report = last_json_line(ROOT / "scripts" / "pretrain_demo_teachers.py", "--clips", "48", "--locations", "4",
                            "--devices", "4", "--heldout", "0.25", "--epochs", "1", "--workers", "1",
                            "--workdir", str(tmp_path / "work"), "--out", str(out), cwd=tmp_path)
    assert report["corpus"]["clips"] == 48 and report["corpus"]["heldout_clips"] == 12
    for name, release in report["teachers"].items():
        assert release["epochs"] == 1 and 0.0 <= release["heldout_accuracy"] <= 1.0
        create_teacher(name, checkpoint=out / release["file"])  # strict keys and shapes, as users load it
