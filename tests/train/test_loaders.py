"""Training batches: audio joined with stored logits by id, through worker processes, and the epoch's draw."""
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, WeightedRandomSampler

from kd.data import AudioError, open_dataset
from kd.train.loaders import (
    ClipDataset,
    DistributedWeightedSampler,
    TeacherTargets,
    balanced_sample_weights,
    make_loader,
    training_sampler,
)
from logit_store import LogitStore


@pytest.fixture(scope="module")
def asc_with_store(demo_asc, tmp_path_factory):
    """The demo ASC training split and a store whose clip logits encode each clip's row (row i -> i / 100)."""
    data = open_dataset(demo_asc["spec"], split="train")
    path = str(tmp_path_factory.mktemp("loaders") / "store.zarr")
    store = LogitStore.create(path, data.ids, data.classes, dataset="demo", dataset_fingerprint=data.fingerprint(),
                              chunk_size=8)
    store.add_teacher("t", codec="f32")
    rows = np.arange(len(data.ids), dtype=np.float32)[:, None] / 100 + np.zeros((1, data.num_classes), np.float32)
    for chunk in range(store.num_chunks):
        store.write_chunk("t", chunk, rows[store.chunk_rows(chunk)])
    return data, path


def _dataset(data, store_path):
    return ClipDataset(data, data.clips, sample_rate=16000, seconds=1.0,
                       teacher=TeacherTargets(store_path, ("t",), activation="softmax"))


@pytest.mark.parametrize("workers", [0, 2])
def test_every_clip_meets_its_own_logits_in_shuffled_batches(asc_with_store, workers):
    """Through DataLoader worker processes, each of which opens the store lazily for itself."""
    data, store_path = asc_with_store
    dataset = _dataset(data, store_path)
    loader = make_loader(dataset, 8, train=True, decode_workers=workers, seed=0)
    seen = []
    for batch in loader:
        expected = batch["index"].float()[:, None] / 100
        assert torch.allclose(batch["teacher"], expected.expand_as(batch["teacher"]), atol=1e-6)
        assert batch["audio"].shape[1] == 16000 and batch["target"].sum(dim=1).eq(1).all()
        seen += batch["index"].tolist()
    assert len(seen) == len(set(seen)) == len(dataset) // 8 * 8  # a shuffle without repeats, last batch dropped
    assert (dataset._store is None) == (workers > 0)  # with workers, each opened its own handle, not the parent


@pytest.mark.parametrize("cache_bytes, decodes", [(1 << 30, 1), (0, 2)])
def test_the_training_process_decodes_each_clip_once(asc_with_store, monkeypatch, cache_bytes, decodes):
    """Every epoch, the precise-BN pass and each evaluation read the same clips: kept decoded, handed out as copies."""
    data, _ = asc_with_store
    dataset = ClipDataset(data, data.clips, sample_rate=16000, seconds=1.0, audio_cache_bytes=cache_bytes)
    calls = []
    decode = data.load_audio
    monkeypatch.setattr(data, "load_audio", lambda *args, **kwargs: calls.append(args[0].id) or decode(*args, **kwargs))
    first = dataset[3]["audio"]
    first.zero_()  # a batch changed in place must not reach the next epoch
    again = dataset[3]["audio"]
    assert len(calls) == decodes and again.abs().sum() > 0
    torch.testing.assert_close(again, torch.from_numpy(decode(data.clips[3], 16000, 1.0)))


def test_an_undecodable_clip_leaves_its_batch_and_raises_alone(demo_asc, tmp_path):
    folder = tmp_path / "asc"
    shutil.copytree(demo_asc["path"], folder)
    data = open_dataset(f"tau22:{folder}", split="train")
    Path(data.clips[1].source).write_bytes(b"not audio")
    dataset = ClipDataset(data, data.clips[:4], sample_rate=16000, seconds=1.0)
    with pytest.warns(UserWarning, match=f"skipping clip {data.clips[1].id}"):
        batch = dataset.__getitems__([0, 1, 2])
    assert [item["index"] for item in batch] == [0, 2]
    with pytest.raises(AudioError, match="unreadable"):  # never an IndexError, which ends plain iteration
        dataset[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset[0]["index"] == 0


def test_balanced_weights_follow_efficientat():
    weights = balanced_sample_weights([(0,), (0,), (0, 1), ()], num_classes=2)
    w0, w1 = 1000 / (3 + 100), 1000 / (1 + 100)
    assert weights.tolist() == pytest.approx([w0, w0, w0 + w1, min(w0, w1)])


@pytest.mark.parametrize("fixture, world, kind", [
    ("demo_asc", 1, RandomSampler), ("demo_asc", 2, DistributedSampler),
    ("demo_tagging", 1, WeightedRandomSampler), ("demo_tagging", 2, DistributedWeightedSampler),
])
def test_the_task_and_the_process_count_choose_the_draw(request, fixture, world, kind):
    data = open_dataset(request.getfixturevalue(fixture)["spec"], split="train")
    dataset = ClipDataset(data, data.clips, sample_rate=16000, seconds=1.0)
    sampler = training_sampler(dataset, rank=world - 1, world=world, seed=0)
    assert isinstance(sampler, kind)
    draw = list(sampler)
    assert len(draw) == len(sampler) == -(-len(dataset) // world)
    if data.task.balanced_sampling:  # AudioSet's draw: with replacement, by EfficientAT's clip weights
        expected = balanced_sample_weights([c.labels for c in data.clips], data.num_classes)
        assert torch.equal(sampler.weights, expected)
    else:
        assert len(set(draw)) == len(draw)
