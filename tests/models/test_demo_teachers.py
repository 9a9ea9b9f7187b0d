"""The pretrained demo teachers that ship with kd: registered like official releases, loaded the same way, and
worth starting from (a fine-tune from them beats a fine-tune from scratch)."""
import shutil

import pytest
import torch

import teachers._registry as registry
from kd.core.checkpoints import TeacherSpec, build_teacher
from kd.demo.data import SCENES, make_demo_data
from kd.train.teacher import TrainTeacherConfig, train_teacher
from layers import CheckpointError, read_checkpoint, sha256_file
from teachers import RELEASES, create_teacher, release_path, teacher_cfg

DEMO_TEACHERS = ("passt_tiny", "ast_tiny", "cp_resnet")  # the quick start's PaSST, AST and CNN member


@pytest.mark.parametrize("name", DEMO_TEACHERS)
def test_release_is_registered_with_its_sha256_and_provenance(name):
    cfg = teacher_cfg(name)
    assert {"file", "sha256", "origin", "pretraining"} <= set(cfg)
    path = release_path(name)
    assert path == RELEASES / cfg["file"] and sha256_file(path) == cfg["sha256"]
    assert 1e5 < path.stat().st_size < 20e6  # float16: well under the ~20 MB a demo release may take
    state = read_checkpoint(path)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    assert "scenes" in cfg["pretraining"]["corpus"] and cfg["pretraining"]["clips"] >= 10_000
    assert cfg["task"] == "asc" and cfg["classes"] == list(SCENES)  # what kd predict and kd embed name its outputs


@pytest.mark.parametrize("name", DEMO_TEACHERS)
def test_release_loads_through_the_strict_checkpoint_path(name):
    pretrained = create_teacher(name, pretrained=True)
    by_path = create_teacher(name, checkpoint=release_path(name))
    released = read_checkpoint(release_path(name))
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(value, by_path.state_dict()[key])
        if key in released:
            torch.testing.assert_close(value, released[key].to(value.dtype))
    assert set(released) == set(pretrained.state_dict())  # strict: no key left out or added
    random = create_teacher(name)
    assert not torch.equal(_classifier_weight(random), _classifier_weight(pretrained))
    # what `kd teach --teacher NAME=FILE` builds from an official release file
    taught = build_teacher(TeacherSpec(name, str(release_path(name))), num_classes=10)
    torch.testing.assert_close(_classifier_weight(taught), _classifier_weight(pretrained))


def _classifier_weight(model: torch.nn.Module) -> torch.Tensor:
    return next(model.get_submodule(model.classifier_names[0]).parameters())


def test_release_path_refuses_damaged_or_missing_files(tmp_path, monkeypatch):
    for name in DEMO_TEACHERS:
        shutil.copy(release_path(name), tmp_path / teacher_cfg(name)["file"])
    damaged = tmp_path / teacher_cfg("passt_tiny")["file"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor
    damaged.write_bytes(bytes(data))
    (tmp_path / teacher_cfg("ast_tiny")["file"]).unlink()
    monkeypatch.setattr(registry, "RELEASES", tmp_path)
    with pytest.raises(CheckpointError, match="sha256"):
        create_teacher("passt_tiny", pretrained=True)
    with pytest.raises(CheckpointError, match="missing"):
        release_path("ast_tiny")


def test_official_releases_are_not_shipped_and_pretrained_excludes_a_checkpoint():
    with pytest.raises(CheckpointError, match="no release of passt_s_swa_p16_128_ap476 ships with kd; download"):
        create_teacher("passt_s_swa_p16_128_ap476", pretrained=True)
    with pytest.raises(CheckpointError, match="not both"):
        create_teacher("passt_tiny", checkpoint=release_path("passt_tiny"), pretrained=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMO_TEACHERS)
def test_fine_tuning_the_release_beats_fine_tuning_from_scratch(tmp_path, name):
    """The quick start's recipe in small: 84 training clips, 2 epochs, the same seed and schedule for both runs."""
    demo = make_demo_data(tmp_path / "demo", "asc", clips=120, seed=5)
    scores = {}
    for start in ("release", "scratch"):
        result = train_teacher(TrainTeacherConfig(
            dataset=demo["spec"], teacher=name, out=str(tmp_path / start), epochs=2, batch_size=16,
            lr=3e-4, seconds=1.0, seed=0, device="cpu", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            checkpoint=str(release_path(name)) if start == "release" else None))
        scores[start] = result.history[-1]["accuracy"]
    assert scores["release"] >= scores["scratch"] + 0.15, scores
