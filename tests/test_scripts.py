"""Every benchmark runs its ``--quick`` size to the end and prints its figures as one JSON object on its last line.

The scripts import library internals (``prepare_distillation``, ``run_teach``, codecs, ...), so a change that
breaks one would otherwise go unnoticed until someone measures again.
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


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_quick_run_prints_its_figures(script, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(figures, dict) and figures
    assert all(v is None or isinstance(v, (int, float, str, list, dict, bool)) for v in figures.values())
