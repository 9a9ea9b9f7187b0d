"""What MLflow shows of kd's runs: datasets as inputs, the student as a model, figures, and `kd compare`'s
teacher-choice table (from runs created here, including mean ± std over two seeds)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from cli import main
from kd.core.checkpoints import TeacherSpec, load_student
from kd.data import open_dataset
from kd.evaluate import figures
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd.track.compare import compare_runs, plot_comparison, record_comparison
from kd.track.tracking import DIGEST_CHARS, DatasetInput, tracked_run
from kd.train.distill import DistillConfig, TeacherChoice, distill
from kd_errors import KdError

STUDENT = "cp_mobile_tiny"


# --- a tiny teach and three distillations (two seeds from one teacher, one from labels) ---------------------------
@pytest.fixture(scope="module")
def tracked(demo_asc, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = str(root / "store.zarr")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        teach = run_teach(TeachConfig(dataset=demo_asc["spec"], store=store, chunk_size=16, tracking_uri=uri,
                                      teachers=(TeacherSpec.parse("passt_tiny"), TeacherSpec.parse("ast_tiny"))))
    runs = {}
    for label, teachers, seed, log_model in (("passt-0", "passt_tiny", 0, True), ("passt-1", "passt_tiny", 1, False),
                                             ("none-0", "none", 0, True)):
        runs[label] = distill(DistillConfig(
            dataset=demo_asc["spec"], student=STUDENT, out=str(root / label), teachers=TeacherChoice.parse(teachers),
            store=store if teachers != "none" else None, epochs=1, batch_size=8, device="cpu", seed=seed,
            tracking_uri=uri, log_model=log_model))
    return {"uri": uri, "store": store, "teach": teach, "runs": runs, "root": root}


def _inputs(run):
    return {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}


@pytest.mark.slow
def test_runs_log_their_datasets_with_the_fingerprint_as_digest(demo_asc, tracked):
    import mlflow

    client = mlflow.MlflowClient(tracked["uri"])
    train, evaluation = (open_dataset(demo_asc["spec"], split=s) for s in ("train", "eval"))
    experiment = client.get_experiment_by_name(f"distill/{train.name}-asc")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    teach = _inputs(client.get_run(tracked["teach"].run_id))
    assert teach["taught"].digest == train.fingerprint()[:DIGEST_CHARS]
    assert teach["written"].name == "logits:store.zarr"
    for run in runs:
        inputs = _inputs(run)
        assert inputs["train"].digest == train.fingerprint()[:DIGEST_CHARS]
        assert inputs["eval"].digest == evaluation.fingerprint()[:DIGEST_CHARS]
        assert json.loads(inputs["train"].source)["spec"] == demo_asc["spec"]
        assert json.loads(inputs["eval"].profile)["clips"] == len(evaluation.clips)
        distilled = run.data.params["teachers"] != "none"
        assert ("teacher logits" in inputs) == distilled
        if distilled:  # the store the teach run wrote, the same dataset in MLflow
            assert inputs["teacher logits"].digest == teach["written"].digest
            assert inputs["teacher logits"].source == teach["written"].source


@pytest.mark.slow
def test_parameters_distinguish_runs_and_bookkeeping_goes_to_tags(tracked):
    import mlflow

    client = mlflow.MlflowClient(tracked["uri"])
    distilled = client.get_run(tracked["runs"]["passt-0"].run_id).data
    assert {"student", "teachers", "kd_lambda", "temperature", "seed", "views"} <= set(distilled.params)
    assert not {"store", "store_fingerprint", "dropped_clips"} & set(distilled.params)
    assert distilled.tags["store"] == tracked["store"] and distilled.tags["store_fingerprint"]
    assert distilled.tags["dropped_clips"] == "0" and distilled.tags["primary_metric"] == "accuracy"
    labels_only = client.get_run(tracked["runs"]["none-0"].run_id).data
    assert set(labels_only.params) == set(distilled.params)  # same keys: only the choices differ
    assert labels_only.params["kd_lambda"] == "1.0" and distilled.params["kd_lambda"] == "0.02"
    differing = {k for k in distilled.params if distilled.params[k] != labels_only.params[k]}
    assert differing == {"teachers", "kd_lambda"}  # what the parallel-coordinates plot opens on


@pytest.mark.slow
def test_student_is_an_mlflow_model_that_predicts_on_waveforms(demo_asc, tracked):
    import mlflow

    mlflow.set_tracking_uri(tracked["uri"])
    client = mlflow.MlflowClient(tracked["uri"])
    result = tracked["runs"]["passt-0"]
    outputs = client.get_run(result.run_id).outputs.model_outputs
    assert len(outputs) == 1
    assert client.get_run(tracked["runs"]["passt-1"].run_id).outputs.model_outputs == []  # log_model=False
    model = mlflow.pyfunc.load_model(f"models:/{outputs[0].model_id}")
    waveforms = np.random.default_rng(0).standard_normal((3, 24000)).astype(np.float32) * 0.1
    logits = model.predict(waveforms)
    student, _ = load_student(result.checkpoint)
    with torch.inference_mode():
        expected = student.eval()(torch.from_numpy(waveforms)).numpy()
    assert logits.shape == (3, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)  # the best checkpoint's weights
    info = mlflow.models.get_model_info(f"models:/{outputs[0].model_id}")
    assert info.signature.inputs.inputs[0].shape == (-1, -1)
    assert info.saved_input_example_info is not None


@pytest.mark.slow
def test_runs_carry_figures(tracked):
    import mlflow

    client = mlflow.MlflowClient(tracked["uri"])

    def pictures(run_id):
        return {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "figures")}

    assert pictures(tracked["runs"]["passt-0"].run_id) == {"confusion_matrix.png", "device_accuracy.png",
                                                           "teacher_agreement.png"}
    assert pictures(tracked["runs"]["none-0"].run_id) == {"confusion_matrix.png", "device_accuracy.png"}
    assert pictures(tracked["teach"].run_id) == {"teacher_quality.png", "store_bytes.png"}
    path = client.download_artifacts(tracked["runs"]["passt-0"].run_id, "figures/confusion_matrix.png",
                                     str(tracked["root"]))
    width, height = Image.open(path).size
    assert 400 < width < 1600 and 300 < height < 1600


@pytest.mark.slow
def test_kd_compare_prints_the_teacher_choice_table(demo_asc, tracked, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setattr("cli.out", Console(width=200))  # rich sized the module's console when cli was imported
    client = mlflow.MlflowClient(tracked["uri"])
    best = {label: client.get_run(r.run_id).data.metrics["best_accuracy"] for label, r in tracked["runs"].items()}
    seeds = [best["passt-0"], best["passt-1"]]
    mean, std = np.mean(seeds), np.std(seeds, ddof=1)
    plot = tmp_path / "choice.png"
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", tracked["uri"], "--plot", str(plot)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"{mean:.4f} ± {std:.4f} (n=2)" in result.output  # two seeds of one teacher choice
    assert f"{best['none-0']:.4f}" in result.output and "labels only" in result.output
    assert "from passt_tiny" in result.output and STUDENT in result.output
    assert Image.open(plot).size[0] > 300
    logged = client.search_runs([client.get_experiment_by_name("compare").experiment_id])
    assert len(logged) == 1 and {a.path for a in client.list_artifacts(logged[0].info.run_id)} == {
        "teacher_choice.json", "teacher_choice.png"}
    experiment = f"distill/{open_dataset(demo_asc['spec']).name}-asc"
    as_json = json.loads(CliRunner().invoke(main, ["compare", experiment, "--tracking-uri", tracked["uri"], "--json",
                                                   "--no-log"]).output)
    cells = as_json["rows"][0]["cells"]
    assert cells["passt_tiny"]["n"] == 2 and cells["passt_tiny"]["mean"] == pytest.approx(mean)
    assert cells["passt_tiny"]["seeds"] == ["0", "1"] and cells["none"]["std"] is None
    assert as_json["rows"][0]["params"] == pytest.approx(tracked["runs"]["none-0"].cost.params)


@pytest.mark.slow
def test_export_log_to_adds_the_onnx_file_to_the_run(tracked, tmp_path):
    import mlflow

    result = tracked["runs"]["none-0"]
    onnx_path = tmp_path / "student.onnx"
    cli = CliRunner().invoke(main, ["export", result.checkpoint, "--out", str(onnx_path), "--log-to", result.run_id,
                                    "--tracking-uri", tracked["uri"], "--json"], catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    model_uri = json.loads(cli.output)["mlflow_model"]
    client = mlflow.MlflowClient(tracked["uri"])
    assert len(client.get_run(result.run_id).outputs.model_outputs) == 2  # the PyTorch model and the ONNX file
    mlflow.set_tracking_uri(tracked["uri"])
    waveforms = np.random.default_rng(1).standard_normal((2, 16000)).astype(np.float32) * 0.1
    onnx_logits = mlflow.pyfunc.load_model(model_uri).predict(waveforms)
    student, _ = load_student(result.checkpoint)
    with torch.inference_mode():
        expected = student.eval()(torch.from_numpy(waveforms)).numpy()
    np.testing.assert_allclose(np.asarray(onnx_logits["logits"] if isinstance(onnx_logits, dict) else onnx_logits),
                               expected, atol=1e-3)
    bad = CliRunner().invoke(main, ["export", result.checkpoint, "--out", str(tmp_path / "b.onnx"), "--log-to", "nope",
                                    "--tracking-uri", tracked["uri"]])
    assert bad.exit_code == 2 and "no MLflow run nope" in bad.output


# --- kd compare on runs logged here with known scores ---------------------------------------------------------------
def _log(uri, experiment, student, teachers, seed, score, *, status_ok=True, **params):
    tags = {"primary_metric": "accuracy"}
    try:
        with tracked_run(experiment, run_name=f"{student} from {teachers}", tracking_uri=uri, tags=tags,
                         params={"student": student, "teachers": teachers, "seed": seed, "kd_lambda": 0.02, **params}
                         ) as run:
            run.log_metrics({"best_accuracy": score, "params": 1000.0 * len(student), "macs": 2e6})
            if not status_ok:
                raise RuntimeError("crashed")
    except RuntimeError:
        pass


def test_compare_table_lines_up_teacher_choices_over_seeds(tracking_uri, tmp_path):
    experiment = "distill/x-asc"
    _log(tracking_uri, experiment, "cp_mobile", "passt", 0, 0.60)
    _log(tracking_uri, experiment, "cp_mobile", "passt", 1, 0.70)
    _log(tracking_uri, experiment, "cp_mobile", "none", 0, 0.50)
    _log(tracking_uri, experiment, "cp_mobile", "ast", 0, 0.62)
    _log(tracking_uri, experiment, "cp_mobile", "ast", 1, 0.66, kd_lambda=0.5)
    _log(tracking_uri, experiment, "cp_mobile", "passt", 2, 0.99, status_ok=False)  # a failed run does not count
    _log(tracking_uri, experiment, "mn04_student", "passt", 0, 0.30)
    with tracked_run(experiment, tracking_uri=tracking_uri, params={"teacher": "passt_tiny"}) as run:
        run.log_metrics({"accuracy": 0.9})  # no distillation: skipped

    table = compare_runs(tracking_uri=tracking_uri)
    assert table.columns == ("ast", "passt", "none")  # labels only last
    assert [r.student for r in table.rows] == ["cp_mobile", "mn04_student"]  # smaller students first
    cp, mn = table.rows
    passt = table.cell(cp, "passt")
    assert passt.values == (0.60, 0.70) and passt.mean == pytest.approx(0.65)
    assert passt.std == pytest.approx(math.sqrt(0.005)) and str(passt) == "0.6500 ± 0.0707 (n=2)"
    assert table.cell(cp, "none").std is None and str(table.cell(cp, "none")) == "0.5000"
    assert table.cell(mn, "none") is None and table.best_column(cp) == "passt"
    assert table.cell(cp, "ast").varying == ("kd_lambda",) and passt.varying == ()
    assert table.skipped == 1 and table.runs == 6 and cp.params == 9000.0 and cp.metric == "accuracy"

    split = compare_runs([experiment], by=["kd_lambda"], tracking_uri=tracking_uri)
    assert "ast | kd_lambda=0.5" in split.columns and split.cell(split.rows[0], "ast | kd_lambda=0.02").n == 1
    only = compare_runs(run_ids=passt.run_ids, tracking_uri=tracking_uri)
    assert only.columns == ("passt",) and only.runs == 2

    run_id = record_comparison(table, tracking_uri)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    logged = json.loads(Path(client.download_artifacts(run_id, "teacher_choice.json", str(tmp_path))).read_text())
    assert logged["rows"][0]["cells"]["passt"]["values"] == [0.60, 0.70] and logged["rows"][0]["best"] == "passt"
    assert Image.open(plot_comparison(table, tmp_path / "t.png")).format == "PNG"
    with pytest.raises(KdError, match="PNG"):
        plot_comparison(table, tmp_path / "t.jpg")


def test_compare_refuses_what_the_server_does_not_have(tracking_uri):
    with pytest.raises(KdError, match="no experiment distill/none"):
        compare_runs(["distill/none"], tracking_uri=tracking_uri)
    with pytest.raises(KdError, match="no distill/\\* experiment"):
        compare_runs(tracking_uri=tracking_uri)
    with pytest.raises(KdError, match="no MLflow run"):
        compare_runs(run_ids=["0123"], tracking_uri=tracking_uri)
    result = CliRunner().invoke(main, ["compare", "distill/none", "--tracking-uri", tracking_uri])
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_dataset_input_digest_is_the_fingerprint(demo_asc, tracking_uri):
    import mlflow

    data = open_dataset(demo_asc["spec"], split="train")
    item = DatasetInput.of_dataset(data, "train", clips=5)
    assert item.digest == data.fingerprint()[:DIGEST_CHARS] and item.profile["clips_used"] == 5
    with tracked_run("unit", tracking_uri=tracking_uri) as run:
        run.log_inputs([item])
    logged = mlflow.MlflowClient(tracking_uri).get_run(run.run_id).inputs.dataset_inputs[0]
    assert logged.dataset.name == f"{data.name}/train" and logged.dataset.source_type == "local"
    assert (logged.tags[0].key, logged.tags[0].value) == ("mlflow.data.context", "train")


# --- figures -------------------------------------------------------------------------------------------------------
def _png_size(figure, path):
    figure.savefig(path)
    image = Image.open(path)
    assert image.format == "PNG"
    return image.size


@pytest.mark.parametrize(("demo_fixture", "expected"), [
    ("demo_asc", {"confusion_matrix.png", "device_accuracy.png"}),
    ("demo_tagging", {"class_ap.png"}),
    ("demo_sed", {"class_ap.png", "class_psds.png"}),
])
def test_the_task_decides_the_evaluation_figures(demo_fixture, expected, request, tmp_path):
    demo = request.getfixturevalue(demo_fixture)
    data = open_dataset(demo["spec"], split="eval")
    clips = data.labelled_clips
    rng = np.random.default_rng(0)
    fps = 25.0 if data.task.frame_level else None
    shape = (len(clips), 100, data.num_classes) if fps else (len(clips), data.num_classes)
    drawn = figures.evaluation_figures(data.task, data, clips, rng.standard_normal(shape), fps)
    assert set(drawn) == expected
    for name, figure in drawn.items():
        width, height = _png_size(figure, tmp_path / name)
        assert 300 < width < 2000 and 200 < height < 2000


def test_agreement_event_roll_and_teach_figures(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(5)]
    student = rng.standard_normal((40, 5))
    same = figures.agreement_figure(student, student, classes, single_label=True, where="eval clips")
    assert same.axes[0].get_title() == "top-class agreement 1.000 on 40 eval clips"
    other = figures.agreement_figure(student, -student, classes, single_label=True, where="eval clips")
    assert other.axes[0].get_title().startswith("top-class agreement 0.000")
    roll = figures.event_roll_figure({"labels": (rng.random((50, 5)) > 0.8).astype(float),
                                      "student": rng.random((50, 5))}, classes, 25.0, "eval clip x")
    assert len(roll.axes) == 3 and _png_size(roll, tmp_path / "roll.png")[0] > 300  # two rows and a colour bar
    quality = figures.teacher_quality_figure({"a": {"accuracy": 0.5, "acc_a": 0.4}, "b": {"accuracy": 0.7}},
                                             "accuracy")
    assert "best accuracy b (0.700)" in quality.axes[0].get_title()
    info = {"clips": 10, "num_views": 1, "bytes_per_logit": 0.98,
            "teachers": {"a": {"codec": "q8", "bytes_per_logit": 0.98, "frame_codec": None}}}
    assert _png_size(figures.store_bytes_figure(info), tmp_path / "bytes.png")[0] > 300

