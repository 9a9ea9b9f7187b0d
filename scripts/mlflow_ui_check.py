"""Look at kd's MLflow runs the way a user does: ``mlflow ui`` in a headless Chromium.

Starts ``mlflow ui`` on 127.0.0.1 (a free port) over a tracking database, renders the ``teach`` experiment,
the experiment of the distill runs and the compare view of those runs with Debian's ``chromium`` (headless),
saves a screenshot and the rendered text of each page, and checks that the compare view lines the runs up:
every run's name, the ``teachers`` and ``store_fingerprint`` parameters and the accuracy metric must be on
the page. Exit status 1 when they are not.

    python scripts/mlflow_ui_check.py kd-quickstart/mlflow.db --out ui-check
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,2400", "--virtual-time-budget=20000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer at {url} within {seconds:.0f} s")


def chromium(url: str, action: str) -> str:
    """Run one headless Chromium ``action`` (``--screenshot=PNG``, ``--dump-dom``) on ``url``; its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", action, url],
                              check=True, capture_output=True, text=True, timeout=120).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", type=Path, help="the SQLite tracking database (e.g. kd-quickstart/mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("ui-check"), help="folder for screenshots and page text")
    args = parser.parse_args()
    import mlflow

    uri = f"sqlite:///{args.database.resolve()}"
    client = mlflow.MlflowClient(uri)
    experiments = client.search_experiments()
    distill = [e for e in experiments if e.name.startswith("distill/")]
    if not distill:
        raise SystemExit(f"{args.database} holds no distill experiment")
    experiment, teach = distill[0], client.get_experiment_by_name("teach")
    runs = client.search_runs([experiment.experiment_id])
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(base)
        ids = json.dumps([r.info.run_id for r in runs])
        training = "workflowType=machine_learning"  # MLflow 3 opens on its GenAI view; the sidebar's "Model training"
        pages = {} if teach is None else {"teach": f"{base}/#/experiments/{teach.experiment_id}/runs?{training}"}
        pages |= {
            "experiment": f"{base}/#/experiments/{experiment.experiment_id}/runs?{training}",
            "compare": f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                       f"&experiments={urllib.parse.quote(json.dumps([experiment.experiment_id]))}",
        }
        texts = {}
        for name, url in pages.items():
            chromium(url, f"--screenshot={args.out / f'{name}.png'}")
            texts[name] = chromium(url, "--dump-dom")
            (args.out / f"{name}.html").write_text(texts[name])
    finally:
        server.terminate()
        server.wait()
    compare = texts["compare"]
    expected = [r.info.run_name for r in runs] + ["teachers", "store_fingerprint", "accuracy"]
    missing = [text for text in expected if text and text not in compare]
    summary = {"experiment": experiment.name, "runs": len(runs), "missing_on_compare_page": missing,
               "screenshots": [str(args.out / f"{name}.png") for name in pages]}
    print(json.dumps(summary))
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
