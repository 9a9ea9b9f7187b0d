"""``kd submit``: the DCASE Task 1 output file and metadata of a student."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml

from kd.data import open_dataset
from kd.deploy.submit import SubmitConfig, submit
from kd_errors import KdError
from students import create_student


@pytest.fixture(scope="module")
def student(demo_asc, tmp_path_factory):
    """A student checkpoint as kd distill writes it (random weights; the format is what is tested)."""
    data = open_dataset(demo_asc["spec"])
    torch.manual_seed(0)
    model = create_student("cp_mobile_tiny", len(data.classes))
    path = tmp_path_factory.mktemp("student") / "best.pt"
    torch.save({"model": model.state_dict(), "meta": {
        "kind": "student", "name": "cp_mobile_tiny", "teachers": "passt,cpr", "classes": data.classes, "task": "asc",
        "seconds": 1.0, "dataset": demo_asc["spec"], "train_split": "split25"}}, path)
    return str(path)


def test_the_submission_file_has_the_challenge_format(demo_asc, student, tmp_path):
    result = submit(SubmitConfig(student, demo_asc["spec"], str(tmp_path / "sub"), "Kd_DEMO_task1_1",
                                 score_split="eval", device="cpu"))
    evaluate = open_dataset(demo_asc["spec"], split="eval")
    with result.output.open() as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["filename", "scene_label", *evaluate.classes]
    assert [r[0] for r in rows[1:]] == [f"audio/{c.id}.wav" for c in evaluate.clips]  # one row per file, in order
    probs = np.array([[float(x) for x in r[2:]] for r in rows[1:]])
    assert probs.shape == (len(evaluate.clips), len(evaluate.classes)) and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [r[1] for r in rows[1:]] == [evaluate.classes[i] for i in probs.argmax(1)]
    meta = yaml.safe_load(result.meta.read_text())
    assert meta["submission"]["label"] == "Kd_DEMO_task1_1"
    system = meta["system"]
    assert (system["student"], system["teachers"], system["training_split"]) == ("cp_mobile_tiny", "passt,cpr",
                                                                                   "split25")
    cost = system["complexity"]
    assert cost["total_parameters"] > 0 and cost["total_macs"] > 0
    assert cost["memory_by_dtype"]["int8"] == cost["total_parameters"]
    assert 0 <= meta["results"]["development"]["accuracy"] == result.accuracy <= 1


def test_an_unlabelled_evaluation_set_gets_a_row_per_file(demo_asc, student, tmp_path):
    """The challenge's evaluation set has no labels: its audio folder as ``folder:`` gives the rows."""
    import shutil

    root = tmp_path / "eval-set"
    shutil.copytree(open_dataset(demo_asc["spec"]).clips[0].source.rsplit("/", 1)[0], root / "audio")
    result = submit(SubmitConfig(student, f"folder:{root}", str(tmp_path / "sub"), "k", device="cpu"))
    with result.output.open() as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert len(rows) - 1 == len(list((root / "audio").iterdir())) == result.files
    assert all(r[0].startswith("audio/") for r in rows[1:]) and result.accuracy is None


def test_a_bad_label_or_another_class_list_is_one_line(demo_asc, demo_tagging, student, tmp_path):
    with pytest.raises(KdError, match="--label 'my system'"):
        SubmitConfig(student, demo_asc["spec"], str(tmp_path), "my system")
    with pytest.raises(KdError, match="trained on other scenes"):
        submit(SubmitConfig(student, demo_tagging["spec"], str(tmp_path), "x", device="cpu"))
