"""Teacher views: drawn reproducibly per clip, applied identically wherever they are replayed."""
import numpy as np
import pytest
import soundfile as sf

from kd.core.views import (
    CLEAN,
    PARAMS,
    SEED_PARAMS,
    ImpulseResponses,
    ViewConfig,
    apply_view,
    draw_view,
    draw_views,
    replay_params,
    view_events,
    view_seeds,
)
from kd.data import Event, open_dataset
from kd_errors import KdError

SR = 16000


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("irs")
    rng = np.random.default_rng(0)
    for i in range(3):
        ir = np.zeros(400, np.float32)
        ir[0], ir[1:] = 1.0, rng.normal(0, 0.05, 399) * np.exp(-np.arange(399) / (40 + 30 * i))
        sf.write(folder / f"mic{i}.wav", ir, 8000)
    return ImpulseResponses(folder)


def _clip(seconds=1.0, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(seed).normal(size=t.size)).astype(
        np.float32)


def test_views_are_drawn_per_clip_reproducibly_and_view_0_is_clean(irs):
    config = ViewConfig.create(4, ["dir", "roll", "gain", "speed"], irs)
    a = draw_views(config, "clip-1", "a")
    assert a.shape == (4, 4) and np.array_equal(a[0], CLEAN)
    assert np.array_equal(a, draw_views(config, "clip-1", "a"))
    assert not np.array_equal(a, draw_views(config, "clip-2", "a"))
    assert not np.array_equal(a, draw_views(ViewConfig.create(4, ["dir", "roll", "gain", "speed"], irs, seed=1),
                                            "clip-1", "a"))
    assert (a[1:, 0] >= 0).all() and (np.abs(a[1:, 1]) <= config.roll_seconds).all()
    assert (np.abs(a[1:, 3] - 1) <= config.speed).all()
    other_device = draw_views(config, "clip-1", "s4")
    assert (other_device[:, 0] == -1).all()  # impulse responses only for the reference device's clips
    assert np.array_equal(other_device[:, 1:], a[:, 1:])  # ... the other draws do not move


def test_only_the_chosen_kinds_are_drawn():
    views = draw_views(ViewConfig.create(3, ["gain"]), "x", "a")
    assert (views[:, [0, 1, 3]] == CLEAN[[0, 1, 3]]).all() and (views[1:, 2] != 0).all()


def test_a_view_is_the_same_samples_every_time_and_the_clean_view_the_clip(irs):
    x = _clip()
    assert np.array_equal(apply_view(x, CLEAN, SR, irs), x)
    for params in ([1, 0.1, -3.0, 1.07], [-1, -0.2, 0, 1.0], [2, 0, 0, 0.93], [-1, 0, 4.0, 1.0]):
        params = np.array(params, np.float32)
        y = apply_view(x, params, SR, irs)
        assert y.dtype == np.float32 and y.shape == x.shape and not np.array_equal(y, x)
        assert np.array_equal(y, apply_view(x.copy(), params.copy(), SR, irs))


def test_each_kind_does_what_it_says(irs):
    x = _clip()
    rolled = apply_view(x, np.array([-1, 0.25, 0, 1], np.float32), SR)
    assert np.array_equal(rolled, np.roll(x, SR // 4))
    louder = apply_view(x, np.array([-1, 0, 6.0, 1], np.float32), SR)
    assert np.allclose(louder, x * 10 ** (6 / 20), rtol=1e-6)
    faster = apply_view(x, np.array([-1, 0, 0, 1.25], np.float32), SR)  # 440 Hz played faster: 550 Hz
    spectrum = np.abs(np.fft.rfft(faster[: int(0.7 * SR)]))
    assert abs(np.argmax(spectrum) / 0.7 - 550) < 3
    convolved = apply_view(x, np.array([0, 0, 0, 1], np.float32), SR, irs)
    assert np.sqrt(np.mean(convolved**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-4)
    with pytest.raises(KdError, match="impulse response"):
        apply_view(x, np.array([0, 0, 0, 1], np.float32), SR)


def test_events_follow_speed_and_roll():
    events = [Event(1.0, 2.0, 0), Event(3.5, 4.0, 1)]
    assert view_events(events, CLEAN, 4.0) == events
    rolled = view_events(events, np.array([-1, 1.0, 0, 1.0]), 4.0)
    assert rolled == [Event(2.0, 3.0, 0), Event(0.5, 1.0, 1)]
    wrapped = view_events([Event(3.0, 4.0, 0)], np.array([-1, 0.5, 0, 1.0]), 4.0)
    assert wrapped == [Event(3.5, 4.0, 0), Event(0.0, 0.5, 0)]
    faster = view_events(events, np.array([-1, 0, 0, 2.0]), 4.0)
    assert faster == [Event(0.5, 1.0, 0), Event(1.75, 2.0, 1)]


def test_bad_view_options_are_one_line_errors(irs):
    with pytest.raises(KdError, match="unknown augmentation"):
        ViewConfig.create(2, ["pitch"])
    with pytest.raises(KdError, match="needs a folder of impulse responses"):
        ViewConfig.create(2, ["dir"])
    with pytest.raises(KdError, match="need augmentations"):
        ViewConfig.create(2, [])
    config = ViewConfig.create(3, ["dir", "roll"], irs)
    assert ViewConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("content", "reason"), [(b"", "empty"), (b"RIFF not a wave", "unreadable"),
                                                 (np.zeros(64, np.float32), "silent")])
def test_a_bad_impulse_response_file_is_named_in_one_line(irs, tmp_path, content, reason):
    folder = tmp_path / "irs"
    folder.mkdir()
    for name in irs.names:
        (folder / name).write_bytes((irs.folder / name).read_bytes())
    bad = folder / "a_first.wav"  # sorted first
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        sf.write(bad, content, SR)
    with pytest.raises(KdError, match=rf"^impulse response {bad}: {reason}"):
        ImpulseResponses(folder)


def test_a_view_is_replayed_from_its_seed_and_old_stores_from_their_parameters(irs):
    config = ViewConfig.create(40, ["dir", "roll", "gain", "speed"], irs, seed=7, dir_p=0.5, dir_devices=())
    seeds = view_seeds(config, "clip-1")
    assert seeds[0] == -1 and len(set(seeds[1:])) == 39 and (0 <= seeds[1:]).all() and (seeds < 2**24).all()
    np.testing.assert_array_equal(seeds, view_seeds(config, "clip-1"))  # the same in every process and rerun
    assert not np.array_equal(seeds, view_seeds(config, "clip-2"))
    params = draw_views(config, "clip-1", "a")
    stored = seeds.astype(np.float32)[:, None]  # what the store keeps: exact below 2**24
    replayed = np.stack([replay_params(config, row, SEED_PARAMS, "a") for row in stored])
    np.testing.assert_array_equal(replayed, params)  # bit for bit
    np.testing.assert_array_equal(replay_params(config, params[3], PARAMS, "a"), params[3])
    with pytest.raises(KdError, match="describes its views by gain"):
        replay_params(config, params[3, :1], ["gain"], "a")


# --- kd teach --views and kd distill --views, end to end ---------------------------------------------------------
def _teach_views(spec, store, irs_folder, tmp_path, codec="f32", **kw):
    from kd.core.checkpoints import TeacherSpec
    from kd.teach.config import TeachConfig
    from kd.teach.run import run_teach

    cfg = TeachConfig(dataset=spec, store=str(store), teachers=(TeacherSpec("passt_tiny"),), chunk_size=8,
                      codec=codec, views=3, augment=("dir", "roll", "gain", "speed"), dir_folder=str(irs_folder),
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return cfg, run_teach(cfg)


@pytest.mark.slow
def test_distill_replays_exactly_the_views_the_teachers_heard(demo_asc, irs, tmp_path):
    """For every kind of augmentation: the student's input samples equal the teacher's, its target that view's."""
    import torch

    from kd.teach.config import WorkerJob
    from kd.teach.pipeline import _Context
    from kd.train.distill import DistillConfig, TeacherChoice, prepare_distillation
    from logit_store import LogitStore

    cfg, summary = _teach_views(demo_asc["spec"], tmp_path / "s.zarr", irs.folder, tmp_path)
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert store.num_views == 3 and summary.clips == store.num_clips
    seeds = store.view_params(store.clip_ids)
    config = ViewConfig.from_dict(store.views)
    assert store.view_param_names == list(SEED_PARAMS) and seeds.shape == (store.num_clips, 3, 1)
    assert (seeds[:, 0] == -1).all() and (seeds == np.round(seeds)).all()  # one integer a view, the clean one -1
    devices = {c.id: c.device for c in open_dataset(demo_asc["spec"]).clips}
    params = np.stack([[draw_view(config, int(s), devices[i]) for s in seeds[r, :, 0]]
                       for r, i in enumerate(store.clip_ids)])
    assert (params[:, 0] == CLEAN).all()
    for column in range(4):  # each kind changed some view of some clip
        assert (params[:, 1:, column] != CLEAN[column]).any()
    job = prepare_distillation(DistillConfig(
        dataset=demo_asc["spec"], student="cp_mobile_tiny", out=str(tmp_path / "run"), store=str(tmp_path / "s.zarr"),
        teachers=TeacherChoice.parse("passt_tiny"), dir_folder=str(irs.folder), device="cpu", epochs=1))
    dataset = job.train_loader.dataset
    assert dataset.teacher.views == "consistent" and dataset.sample_rate == 32000
    teach_job = WorkerJob(seconds=1.0, min_seconds=0.0, variable=False, pad_samples=0, device="cpu", precision="fp32",
                     decode_workers=1, views=ViewConfig.from_dict(store.views))
    teacher_side = _Context(cfg, teach_job)
    kinds_seen = np.zeros(4, bool)
    torch.manual_seed(0)
    for index in range(len(dataset)):
        item = dataset[index]
        clip_id, view = dataset.clips[index].id, item["view"]
        heard, _ = teacher_side.decode(clip_id)
        np.testing.assert_array_equal(item["audio"].numpy(), heard[view])  # bit for bit
        expected = store.read([clip_id], teachers=["passt_tiny"], views=np.array([view]))[0]
        np.testing.assert_array_equal(item["teacher"].numpy(), expected)
        kinds_seen |= params[store.rows_of([clip_id])[0], view] != CLEAN
    assert kinds_seen.all()
    # clean-targets: the same replayed inputs, the clean view's logits (offline KD's target) for every view
    job = prepare_distillation(DistillConfig(
        dataset=demo_asc["spec"], student="cp_mobile_tiny", out=str(tmp_path / "run2"), store=str(tmp_path / "s.zarr"),
        teachers=TeacherChoice.parse("passt_tiny"), dir_folder=str(irs.folder), device="cpu", epochs=1,
        views="clean-targets"))
    dataset, replayed = job.train_loader.dataset, set()
    for index in range(len(dataset)):
        item = dataset[index]
        clip_id = dataset.clips[index].id
        heard, _ = teacher_side.decode(clip_id)
        (view,) = [k for k in range(len(heard)) if np.array_equal(item["audio"].numpy(), heard[k])]
        replayed.add(view)
        clean = store.read([clip_id], teachers=["passt_tiny"], views=np.array([0]))[0]
        np.testing.assert_array_equal(item["teacher"].numpy(), clean)
    teacher_side.close()
    assert replayed - {0}


@pytest.mark.slow
def test_views_resume_alike_and_refuse_another_impulse_response_set(demo_asc, irs, tmp_path):
    from kd.train.distill import DistillConfig, TeacherChoice, distill
    from logit_store import LogitStore

    path = tmp_path / "s.zarr"
    _teach_views(demo_asc["spec"], path, irs.folder, tmp_path)
    first = LogitStore.open(str(path))
    ids = first.chunk_ids(1)
    before_params, before = first.view_params(ids), first.read(ids, teachers=["passt_tiny"])
    (path / "teachers" / "passt_tiny" / "done" / "c" / "1").unlink()  # chunk 1 lost, as a killed job leaves it
    _, summary = _teach_views(demo_asc["spec"], path, irs.folder, tmp_path)
    assert summary.chunks_run == 1
    again = LogitStore.open(str(path))
    np.testing.assert_array_equal(again.view_params(ids), before_params)
    np.testing.assert_array_equal(again.read(ids, teachers=["passt_tiny"]), before)
    other = tmp_path / "other-irs"
    other.mkdir()
    sf.write(other / "x.wav", np.r_[1.0, np.zeros(99)].astype(np.float32), 16000)
    options = {"dataset": demo_asc["spec"], "student": "cp_mobile_tiny", "out": str(tmp_path / "r"), "store": str(path),
               "teachers": TeacherChoice.parse("passt_tiny"), "device": "cpu", "epochs": 1}
    with pytest.raises(KdError, match="not the impulse-response set the store's views were drawn from"):
        distill(DistillConfig(dir_folder=str(other), **options))
    with pytest.raises(KdError, match="pass the folder they came from with --dir"):
        distill(DistillConfig(**options))
    with pytest.raises(KdError, match="--roll/--gain would change the input"):
        distill(DistillConfig(dir_folder=str(irs.folder), roll_seconds=0.1, **options))


@pytest.mark.slow
def test_consistent_distillation_from_a_topk_store(demo_asc, irs, tmp_path):
    """kd teach --codec topk keeps the k largest logits of each view (scene targets: an even floor for the rest,
    their softmax mass kept); kd distill --views consistent replays a view and trains on its reconstructed logits."""
    from kd.train.distill import DistillConfig, TeacherChoice, prepare_distillation
    from logit_store import LogitStore

    _teach_views(demo_asc["spec"], tmp_path / "s.zarr", irs.folder, tmp_path, codec="topk", topk=4)
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    info = store.teacher_info("passt_tiny")
    assert info["codec_config"] == {"name": "topk", "k": 4, "bits": 8, "rest": "softmax", "scale": 1.0,
                                    "profile": False, "num_classes": 10}
    job = prepare_distillation(DistillConfig(
        dataset=demo_asc["spec"], student="cp_mobile_tiny", out=str(tmp_path / "run"), store=str(tmp_path / "s.zarr"),
        teachers=TeacherChoice.parse("passt_tiny"), dir_folder=str(irs.folder), device="cpu", epochs=1))
    dataset = job.train_loader.dataset
    views = set()
    for index in range(0, len(dataset), 7):
        item = dataset[index]
        views.add(item["view"])
        target = item["teacher"].numpy()
        expected = store.read([dataset.clips[index].id], teachers=["passt_tiny"], views=np.array([item["view"]]))[0]
        np.testing.assert_array_equal(target, expected)
        assert len(np.unique(np.sort(target)[:-4])) == 1  # the six classes outside the top 4 share one logit
    assert views - {0}
    with pytest.raises(KdError, match="--soft-loss logits matches every logit"):  # logit matching needs them all
        prepare_distillation(DistillConfig(
            dataset=demo_asc["spec"], student="cp_mobile_tiny", out=str(tmp_path / "run2"),
            store=str(tmp_path / "s.zarr"), teachers=TeacherChoice.parse("passt_tiny"), dir_folder=str(irs.folder),
            device="cpu", epochs=1, soft_loss="logits"))


def test_topk_keeping_every_class_is_refused_in_one_line(demo_asc, tmp_path):
    from kd.core.checkpoints import TeacherSpec
    from kd.teach.config import TeachConfig
    from kd.teach.run import prepare_store
    from logit_store import StoreError

    cfg = TeachConfig(dataset=demo_asc["spec"], store=str(tmp_path / "s.zarr"), teachers=(TeacherSpec("passt_tiny"),),
                      codec="topk", topk=20)
    with pytest.warns(UserWarning, match="RANDOM weights"), pytest.raises(StoreError, match=r"k=20 of 10 classes"):
        prepare_store(cfg)
