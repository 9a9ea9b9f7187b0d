"""Look at kd's MLflow runs the way a user does: ``mlflow ui`` in a headless Chromium.

Starts ``mlflow ui`` on 127.0.0.1 (a free port) over a tracking database and renders, with Debian's ``chromium``
(headless), saving a screenshot and the rendered page of each:

* ``teach``: the runs table of the ``teach`` experiment;
* ``experiment``: the runs table of the distill runs, which must show the Dataset and Models columns with the
  runs' datasets (the training split's name) and logged student models;
* ``artifact``: the artifact view of a distilled run opened on ``figures/confusion_matrix.png`` (or, for
  multi-label tasks, ``figures/class_ap.png``), which must render the image (an ``<img>`` of the file the UI
  fetched, which the server hands out as a PNG);
* ``compare``: the compare view of the distill runs, which must line them up: every run's name, the ``teachers``
  and ``kd_lambda`` parameters and the primary metric on the page;
* ``teacher_choice`` (when ``kd compare`` or ``kd quickstart`` logged one): the artifact view of the newest run of the
  ``compare`` experiment on ``teacher_choice.png``, which must render it too.

Prints one JSON line (what was missing where, the screenshots); exit status 1 when something is missing.

    python scripts/mlflow_ui_check.py kd-quickstart/mlflow.db --out ui-check
"""
from __future__ import annotations

import argparse
import json
import re
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
                  "--hide-scrollbars", "--virtual-time-budget=25000"]
WIDE, TALL = "--window-size=2400,1400", "--window-size=1600,2400"
TRAINING = "workflowType=machine_learning"  # MLflow 3 opens on its GenAI view; the sidebar's "Model training"
FIGURES = ("figures/confusion_matrix.png", "figures/class_ap.png")  # single-label tasks, multi-label tasks


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


def chromium(url: str, action: str, size: str) -> str:
    """Run one headless Chromium ``action`` (``--screenshot=PNG``, ``--dump-dom``) on ``url``; its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(["chromium", *CHROMIUM_FLAGS, size, f"--user-data-dir={profile}", action, url],
                              check=True, capture_output=True, text=True, timeout=180).stdout


def shows_image(base: str, html: str, run_id: str, artifact: str) -> bool:
    """Whether the page shows ``artifact`` as an image (the UI fetches the file and displays it as a ``blob:`` URL)
    and the server hands the file out as PNG bytes."""
    shown = re.search(rf'<img[^>]*alt="{re.escape(artifact)}"[^>]*src="blob:', html) is not None
    query = urllib.parse.urlencode({"path": artifact, "run_uuid": run_id})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=10) as answer:
        return shown and answer.read(8) == b"\x89PNG\r\n\x1a\n"


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
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("kd_sweep") != "parent"]  # a sweep's parent run only groups the distillations
    distilled = [r for r in runs if r.data.params.get("teachers", "none") != "none"] or runs
    shown = distilled[0]
    listed = {a.path for a in client.list_artifacts(shown.info.run_id, "figures")}
    figure = next((f for f in FIGURES if f in listed), FIGURES[0])
    compare_experiment = client.get_experiment_by_name("compare")
    compare_runs = client.search_runs([compare_experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                      max_results=1) if compare_experiment else []
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = json.dumps([r.info.run_id for r in runs])
    run_page = f"{base}/#/experiments/{experiment.experiment_id}/runs/{shown.info.run_id}"
    pages = {} if teach is None else {"teach": (f"{base}/#/experiments/{teach.experiment_id}/runs?{TRAINING}", WIDE)}
    pages |= {
        "experiment": (f"{base}/#/experiments/{experiment.experiment_id}/runs?{TRAINING}", WIDE),
        "artifact": (f"{run_page}/artifacts/{figure}", TALL),
        "compare": ((f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                     f"&experiments={urllib.parse.quote(json.dumps([experiment.experiment_id]))}"), TALL),
    }
    if compare_runs:
        choice = compare_runs[0]
        pages["teacher_choice"] = ((f"{base}/#/experiments/{compare_experiment.experiment_id}/runs/"
                                    f"{choice.info.run_id}/artifacts/teacher_choice.png"), TALL)
    texts = {}
    try:
        wait_for(base)
        for name, (url, size) in pages.items():
            chromium(url, f"--screenshot={args.out / f'{name}.png'}", size)
            texts[name] = chromium(url, "--dump-dom", size)
            (args.out / f"{name}.html").write_text(texts[name])
        images = {"artifact": shows_image(base, texts["artifact"], shown.info.run_id, figure)}
        if compare_runs:
            images["teacher_choice"] = shows_image(base, texts["teacher_choice"], compare_runs[0].info.run_id,
                                                   "teacher_choice.png")
    finally:
        server.terminate()
        server.wait()
    train_input = next((i.dataset.name for i in shown.inputs.dataset_inputs
                        if i.tags and i.tags[0].value == "train"), "a train dataset input")
    models = [r for r in runs if r.outputs and r.outputs.model_outputs]
    missing = {
        "experiment": [t for t in ("Dataset", "Models", train_input) if t not in texts["experiment"]]
                      + ([] if not models or "student" in texts["experiment"] else ["a logged model"]),
        "artifact": [] if images["artifact"] else [f"the image {figure}"],
        "compare": [t for t in [r.info.run_name for r in runs] + ["teachers", "kd_lambda",
                                                                  shown.data.tags.get("primary_metric", "accuracy")]
                    if t and t not in texts["compare"]],
    }
    if compare_runs:
        missing["teacher_choice"] = [] if images["teacher_choice"] else ["the image teacher_choice.png"]
    summary = {"experiment": experiment.name, "runs": len(runs), "runs_with_models": len(models),
               "figure": figure, "missing": {k: v for k, v in missing.items() if v},
               "screenshots": [str(args.out / f"{name}.png") for name in pages]}
    print(json.dumps(summary))
    sys.exit(1 if summary["missing"] else 0)


if __name__ == "__main__":
    main()
