"""Unlabelled clips and transfer sets: teachers label them, students learn from them with the soft loss only."""
import csv
import shutil

import numpy as np
import pytest
import torch
from interrupt import Killed, kill_after_epoch

from kd.core.checkpoints import TeacherSpec
from kd.data import DatasetError, open_dataset
from kd.tasks import ASC
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd.train.augment import mixup_params
from kd.train.distill import DistillConfig, TeacherChoice, distill, prepare_distillation
from kd.train.loaders import MixedBatchSampler
from kd.train.loss import DistillLoss
from kd_errors import KdError


def _manifest(demo, path, unlabelled_every=3):
    """The demo's clips as a manifest; every ``unlabelled_every``-th training row without its label."""
    rows = []
    for split in ("train", "eval"):
        data = open_dataset(demo["spec"], split=split)
        for i, clip in enumerate(data.clips):
            label = "" if split == "train" and i % unlabelled_every == 0 else data.classes[clip.labels[0]]
            rows.append({"path": clip.source, "label": label, "device": clip.device, "split": split, "id": clip.id})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return f"manifest:{path}"


def test_empty_labels_are_unlabelled_clips_never_empty_targets(demo_asc, tmp_path):
    data = open_dataset(_manifest(demo_asc, tmp_path / "m.csv"), split="train")
    assert data.task is ASC and data.unlabelled_clips and data.labelled_clips
    assert all(not c.labelled and c.labels == () for c in data.unlabelled_clips)
    with pytest.raises(DatasetError, match="has no labels"):
        data.targets(data.unlabelled_clips[0])
    dropped = open_dataset(demo_asc["spec"], split="train").unlabelled()
    assert not dropped.has_labels and len(dropped) == len(data)
    with pytest.raises(DatasetError, match="has no labels"):
        dropped.targets(dropped.clips[0])


def test_a_folder_of_audio_is_an_unlabelled_dataset(demo_asc, tmp_path):
    folder = tmp_path / "recordings"
    shutil.copytree(f"{demo_asc['path']}/audio", folder / "site1")
    data = open_dataset(f"folder:{folder}")
    assert data.task is None and data.classes == [] and not data.has_labels
    assert data.clips[0].id.startswith("site1/") and len(data) == len(list((folder / "site1").glob("*.wav")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no audio files"):
        open_dataset(f"folder:{tmp_path / 'empty'}")


def test_a_transfer_clip_adds_no_label_loss():
    torch.manual_seed(0)
    logits, teacher = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    labelled = torch.tensor([True, True, False, False])
    loss = DistillLoss(ASC, kd_lambda=0.3, temperature=2.0)
    terms = loss(logits, labels, loss.targets(teacher), labelled)
    assert terms.hard.item() == pytest.approx(ASC.hard_loss(logits[:2], labels[:2]).item())
    assert terms.soft.item() == pytest.approx(ASC.soft_loss(logits, loss.targets(teacher), 2.0).item())
    terms.total.backward()
    garbage = labels.clone()
    garbage[2:] = torch.rand(2, 5)  # whatever placeholder a transfer clip carries
    assert loss(logits, garbage, loss.targets(teacher), labelled).hard.item() == pytest.approx(terms.hard.item())
    alone = loss(logits, labels, loss.targets(teacher), torch.zeros(4, dtype=torch.bool))
    assert alone.hard.item() == 0.0 and alone.total.item() == pytest.approx(0.7 * alone.soft.item())


def test_mixup_partners_stay_within_labelled_and_transfer_clips():
    groups = torch.tensor([True, False, True, True, False, False, True, False])
    for seed in range(20):
        torch.manual_seed(seed)
        perm = mixup_params(8, 0.3, groups=groups).perm
        assert torch.equal(groups[perm], groups) and sorted(perm.tolist()) == list(range(8))


@pytest.mark.parametrize("ratio, world", [(1.0, 1), (3.0, 1), (0.25, 2)])
def test_batches_hold_transfer_clips_in_the_set_ratio(ratio, world):
    labelled = list(range(40))
    per_rank = []
    for rank in range(world):
        torch.manual_seed(7)  # every rank seeds alike, as the trainer does per epoch
        sampler = MixedBatchSampler(labelled[rank::world], 12, 40, 8, ratio, rank, world)
        batches = list(sampler)
        n_transfer = round(8 * ratio / (1 + ratio))
        assert len(batches) == len(sampler) == len(labelled[rank::world]) // (8 - n_transfer)
        assert all(sum(i >= 40 for i in b) == n_transfer and len(b) == 8 for b in batches)
        per_rank.append({i for b in batches for i in b if i >= 40})
    if world == 2:
        assert not per_rank[0] & per_rank[1]  # ranks share the transfer clips out, as they do the labelled ones


@pytest.fixture(scope="module")
def taught_manifest(demo_asc, tmp_path_factory):
    """A manifest of the demo's clips with every third training row unlabelled, taught into a store."""
    root = tmp_path_factory.mktemp("transfer")
    spec = _manifest(demo_asc, root / "m.csv")
    store = str(root / "s.zarr")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        run_teach(TeachConfig(dataset=spec, split="train", store=store, teachers=(TeacherSpec("passt_tiny"),),
                              chunk_size=16, tracking_uri=f"sqlite:///{root / 'mlflow.db'}"))
    return spec, store


def _cfg(taught, out, tracking_uri, **kw):
    spec, store = taught
    return DistillConfig(dataset=spec, student="cp_mobile_tiny", out=str(out), store=store,
                         teachers=TeacherChoice.parse("passt_tiny"), epochs=kw.pop("epochs", 1), batch_size=8,
                         device="cpu", tracking_uri=tracking_uri, **kw)


@pytest.mark.slow
def test_manifest_with_empty_labels_teaches_and_distils(taught_manifest, tmp_path, tracking_uri):
    import mlflow

    data = open_dataset(taught_manifest[0], split="train")
    cfg = _cfg(taught_manifest, tmp_path / "run", tracking_uri)
    job = prepare_distillation(cfg)
    batch = next(iter(job.train_loader))
    assert 0 < int(batch["labelled"].sum()) < len(batch["labelled"])  # labelled and transfer clips in one batch
    assert len(job.train_loader.dataset.parts[0]) == len(data.labelled_clips)
    result = distill(cfg)
    params = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data.params
    assert params["transfer_clips"] == str(len(data.unlabelled_clips))
    assert params["train_clips"] == str(len(data.labelled_clips))
    assert np.isfinite(result.history[0]["train_soft_loss"])


@pytest.mark.slow
def test_a_transfer_set_without_logits_is_refused_or_dropped(demo_asc, taught_manifest, tmp_path, tracking_uri):
    import mlflow

    folder = tmp_path / "more"
    shutil.copytree(f"{demo_asc['path']}/audio", folder / "site")  # ids site/...: clips the store does not hold
    transfer = (f"folder:{folder}",)
    with pytest.raises(KdError, match=r"training clips \(train split and transfer sets\) have no logits"):
        distill(_cfg(taught_manifest, tmp_path / "refused", tracking_uri, transfer=transfer))
    with pytest.raises(KdError, match="need stored --teachers"):
        DistillConfig(dataset=taught_manifest[0], student="cp_mobile_tiny", out=str(tmp_path / "x"), transfer=transfer)
    result = distill(_cfg(taught_manifest, tmp_path / "dropped", tracking_uri, transfer=transfer, missing="drop"))
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    own = len(open_dataset(taught_manifest[0], split="train").unlabelled_clips)
    assert run.params["transfer_clips"] == str(own)  # the folder's clips have no logits: dropped, the split's own stay
    assert run.tags["dropped_clips"] == str(len(open_dataset(f"folder:{folder}")))


@pytest.mark.slow
def test_a_run_with_transfer_clips_resumes_exactly(taught_manifest, tmp_path, tracking_uri):
    full = distill(_cfg(taught_manifest, tmp_path / "full", tracking_uri, epochs=2))

    with pytest.raises(Killed):
        distill(_cfg(taught_manifest, tmp_path / "resumed", tracking_uri, epochs=2), on_epoch=kill_after_epoch(1))
    resumed = distill(_cfg(taught_manifest, tmp_path / "resumed", tracking_uri, epochs=2, resume=True))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


@pytest.mark.slow
def test_a_folder_taught_with_the_labelled_split_distils_as_a_transfer_set(demo_asc, tmp_path, tracking_uri):
    import mlflow

    folder = tmp_path / "field-recordings"
    shutil.copytree(f"{demo_asc['path']}/audio", folder / "site")
    transfer = (f"folder:{folder}",)
    store = str(tmp_path / "s.zarr")
    teach = TeachConfig(dataset=demo_asc["spec"], store=store, teachers=(TeacherSpec("passt_tiny"),), chunk_size=16,
                        tracking_uri=tracking_uri, transfer=transfer)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        summary = run_teach(teach)
    labelled, unlabelled = open_dataset(demo_asc["spec"]), open_dataset(f"folder:{folder}")
    assert summary.clips == len(labelled) + len(unlabelled)
    assert set(summary.metrics["passt_tiny"]) >= {"accuracy"}  # scored on the labelled clips only
    result = distill(DistillConfig(dataset=demo_asc["spec"], student="cp_mobile_tiny", out=str(tmp_path / "run"),
                                   store=store, teachers=TeacherChoice.parse("passt_tiny"), epochs=1, batch_size=8,
                                   device="cpu", tracking_uri=tracking_uri, transfer=transfer, transfer_ratio=3.0))
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data
    assert run.params["transfer_clips"] == str(len(unlabelled)) and run.params["transfer_ratio"] == "3.0"
    assert [v for k, v in run.tags.items() if k.startswith("transfer_sets.")] == [unlabelled.unlabelled().fingerprint()]
    with pytest.raises(KdError, match="no labels, so no classes"):
        run_teach(TeachConfig(dataset=f"folder:{folder}", store=str(tmp_path / "x.zarr"),
                              teachers=(TeacherSpec("passt_tiny"),), tracking_uri=tracking_uri))
