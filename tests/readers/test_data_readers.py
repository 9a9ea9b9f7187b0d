"""Readers of kd.data on hand-written fixtures in the real layouts and on demo data; errors; fingerprints."""
import pickle
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from kd.data import AudioError, DatasetError, open_dataset
from kd.demo.data import make_demo_data

SR = 32000


def noise_file(path, seconds=1.0, sr=SR, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
    return path


CLASS_CSV = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal"\n' \
            '3,/m/07yv9,"Vehicle, car"\n'


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return {task: make_demo_data(root / task, task, clips=24, seconds=1.0 if task != "asc" else None, seed=3)
            for task in ("asc", "tagging", "sed")}


# --- TAU22 ---------------------------------------------------------------------------------------------------------


def test_tau22_splits_devices_cities_and_one_hot_targets(demo):
    spec = demo["asc"]["spec"]
    train, evaluate = open_dataset(spec), open_dataset(spec, split="evaluate")
    assert (train.split, evaluate.split, train.task.name) == ("train", "eval", "asc")
    assert len(train) == demo["asc"]["splits"]["train"] and len(evaluate) == demo["asc"]["splits"]["eval"]
    assert set(train.devices) <= {"a", "b", "c", "s1", "s2", "s3"}
    assert evaluate.seen_devices == train.seen_devices == train.devices
    assert {"s4", "s5", "s6"} <= set(evaluate.unseen_devices)
    assert not set(train.ids) & set(evaluate.ids)
    assert len(open_dataset(spec, split="all")) == len(train) + len(evaluate)
    clip = evaluate.clips[0]
    scene, city, *_, device = clip.id.split("-")
    assert (evaluate.classes[clip.labels[0]], clip.city, clip.device) == (scene, city, device)
    target = evaluate.targets(clip)
    assert target.dtype == np.float32 and target.sum() == 1 and target[clip.labels[0]] == 1
    assert train.classes == sorted(train.classes) and len(train.classes) == 10


def test_tau22_layout_errors_name_the_file_and_column(demo, tmp_path):
    root = tmp_path / "tau"
    shutil.copytree(demo["asc"]["path"], root)
    with pytest.raises(DatasetError, match="unknown split"):
        open_dataset(f"tau22:{root}", split="dev")
    meta = (root / "meta.csv").read_text().replace("source_label", "device")
    (root / "meta.csv").write_text(meta)
    with pytest.raises(DatasetError, match=r"meta.csv: missing column\(s\) source_label"):
        open_dataset(f"tau22:{root}")
    (root / "meta.csv").write_text(meta.replace("device", "source_label"))
    fold = root / "evaluation_setup" / "fold1_train.csv"
    fold.write_text(fold.read_text().replace("audio/", "sound/", 1))
    with pytest.raises(DatasetError, match="fold1_train.csv: 1 filename.*not in meta.csv.*sound/"):
        open_dataset(f"tau22:{root}", split="eval")


def test_missing_or_corrupt_file_is_an_audio_error_not_zeros(demo, tmp_path):
    root = tmp_path / "tau"
    shutil.copytree(demo["asc"]["path"], root)
    ds = open_dataset(f"tau22:{root}")
    first, second = ds.clips[:2]
    (root / "audio" / f"{first.id}.wav").write_bytes(b"RIFF....WAVEfmt " + bytes(64))
    (root / "audio" / f"{second.id}.wav").unlink()
    with pytest.raises(AudioError, match="unreadable") as info:
        ds.load_audio(first, SR, 1.0)
    assert info.value.clip_id == first.id
    with pytest.raises(AudioError, match="missing file"):
        ds.load_audio(second, SR, 1.0)
    assert np.abs(ds.load_audio(ds.clips[2], SR, 1.0)).max() > 0


# --- AudioSet folder -----------------------------------------------------------------------------------------------


def audioset_folder(root):
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "class_labels_indices.csv").write_text(CLASS_CSV)
    header = "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=4, num_segs=4\n" \
             "# YTID, start_seconds, end_seconds, positive_labels\n"
    (root / "balanced_train_segments.csv").write_text(header + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'.replace(",/t/dd00088", ",/m/07yv9")
        + '-0RWZT-miFs, 420.000, 430.000, "/m/04rlf"\n'
        + 'Yabcdefghij, 0.000, 10.000, "/m/0jbk,/m/04rlf,/m/09x0r"\n'
        + 'gonegonegon, 10.000, 20.000, "/m/0jbk"\n'))
    (root / "eval_segments.csv").write_text(header + 'zzzzzzzzzzz, 5.000, 15.000, "/m/07yv9"\n')
    noise_file(root / "audio" / "Y--PJHxphWEs_30.000_40.000.wav")
    noise_file(root / "audio" / "-0RWZT-miFs.flac", seed=1)
    noise_file(root / "more" / "YYabcdefghij.wav", seed=2)
    noise_file(root / "audio" / "zzzzzzzzzzz_5000.wav", seed=3)
    return root


def test_audioset_folder_parses_quoted_mid_lists_and_matches_downloader_names(tmp_path):
    root = audioset_folder(tmp_path / "as")
    with pytest.warns(UserWarning, match="1 of 4 segments have no audio"):
        ds = open_dataset(f"audioset:{root}")
    assert ds.task.name == "tagging" and ds.classes[3] == "Vehicle, car" and ds.mids[0] == "/m/09x0r"
    assert ds.ids == ["--PJHxphWEs", "-0RWZT-miFs", "Yabcdefghij"]
    assert [c.labels for c in ds.clips] == [(0, 3), (1,), (0, 1, 2)]
    assert ds.skipped == [("gonegonegon", "no audio file")]
    np.testing.assert_array_equal(ds.targets(ds.clips[2]), [1, 1, 1, 0])
    assert ds.load_audio(ds.clips[1], 16000, 2.0).shape == (32000,)
    assert open_dataset(f"audioset:{root}", split="eval").ids == ["zzzzzzzzzzz"]


def test_audioset_folder_errors(tmp_path):
    root = audioset_folder(tmp_path / "as")
    with pytest.raises(DatasetError, match="no segment CSV for split unbalanced_train"):
        open_dataset(f"audioset:{root}", split="unbalanced_train")
    (root / "eval_segments.csv").write_text('zzzzzzzzzzz, 5.000, 15.000, "/m/unknown"\n')
    with pytest.raises(DatasetError, match=r"eval_segments.csv: 1 MID\(s\).*/m/unknown"):
        open_dataset(f"audioset:{root}", split="eval")
    (root / "metadata" / "class_labels_indices.csv").unlink()
    with pytest.raises(DatasetError, match="no class_labels_indices.csv"):
        open_dataset(f"audioset:{root}")


# --- AudioSet HDF5 -------------------------------------------------------------------------------------------------


def test_audioset_hdf5_folder_and_single_file(demo):
    info = demo["tagging"]
    train = open_dataset(info["spec"])
    evaluate = open_dataset(info["spec"], split="eval")
    assert (len(train), len(evaluate)) == (info["splits"]["train"], info["splits"]["eval"])
    assert train.classes == info["classes"] and train.mids[0] == "/t/kd00001"
    with h5py.File(train.clips[0].source) as f:
        name = f["audio_name"][0].decode()
        packed = f["target"][0]
    assert name == f"Y{train.clips[0].id}.mp3"
    np.testing.assert_array_equal(train.targets(train.clips[0]), np.unpackbits(packed, count=10))
    x = train.load_audio(train.clips[0], 16000, 1.0)
    assert x.shape == (16000,) and np.abs(x).max() > 0.01
    single = open_dataset(f"audioset-hdf5:{evaluate.clips[0].source}")
    assert single.split == "eval" and single.ids == evaluate.ids
    with pytest.raises(DatasetError, match="holds split eval, not train"):
        open_dataset(f"audioset-hdf5:{evaluate.clips[0].source}", split="train")


def test_audioset_hdf5_survives_pickling_into_a_worker(demo):
    ds = open_dataset(demo["tagging"]["spec"])
    before = ds.load_audio(ds.clips[1], SR)  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.load_audio(clone.clips[1], SR), before)


def test_audioset_hdf5_layout_errors(demo, tmp_path):
    path = tmp_path / "eval_segments_mp3.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Yaaaaaaaaaaa.mp3"], dtype="S20"))
        f.create_dataset("mp3", shape=(1,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        f.create_dataset("target", data=np.zeros((1, 3), np.uint8))
    classes = demo["tagging"]["path"] + "/metadata/class_labels_indices.csv"
    with pytest.raises(DatasetError, match=r"target has shape \(1, 3\); expected \(1, 2\)"):
        open_dataset(f"audioset-hdf5:{path}", classes=classes)
    with pytest.raises(DatasetError, match="no class_labels_indices.csv"):
        open_dataset(f"audioset-hdf5:{path}")
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Yaaaaaaaaaaa.mp3"], dtype="S20"))
    with pytest.raises(DatasetError, match="missing HDF5 dataset.*mp3"):
        open_dataset(f"audioset-hdf5:{path}", classes=classes)


def test_empty_hdf5_row_is_an_audio_error(tmp_path, demo):
    path = tmp_path / "eval_segments_mp3.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Yaaaaaaaaaaa.mp3"], dtype="S20"))
        f.create_dataset("mp3", shape=(1,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
    ds = open_dataset(f"audioset-hdf5:{path}", classes=demo["tagging"]["path"] + "/metadata/class_labels_indices.csv")
    assert not ds.has_labels and ds.ids == ["aaaaaaaaaaa"]
    with pytest.raises(AudioError, match="empty"):
        ds.load_audio(ds.clips[0], SR)


# --- AudioSet-Strong -----------------------------------------------------------------------------------------------


def strong_folder(root):
    root.mkdir(parents=True)
    head = "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
    (root / "audioset_train_strong.tsv").write_text(head + "abcdefghijk_30000\t1.000\t2.500\t/m/09x0r\n"
                                                    "abcdefghijk_30000\t0.310\t0.330\t/m/04rlf\n"
                                                    "abcdefghijk_30000\t9.000\t10.000\t/m/09x0r\n")
    (root / "audioset_eval_strong.tsv").write_text(head + "-bcdefghijk_0\t0.000\t0.500\t/m/04rlf\n"
                                                   "-bcdefghijk_0\t0.200\t0.400\t/m/0unseen\n")
    (root / "mid_to_display_name.tsv").write_text("/m/09x0r\tSpeech\n/m/04rlf\tMusic\n")
    noise_file(root / "audio" / "abcdefghijk_30000.wav", seconds=10.0)
    noise_file(root / "eval_audio" / "Y-bcdefghijk_0.000_10.000.flac", seconds=1.0)
    return root


def test_strong_frame_targets_follow_onsets_and_offsets(tmp_path):
    root = strong_folder(tmp_path / "strong")
    ds = open_dataset(f"audioset-strong:{root}")
    assert ds.task.name == "sed" and ds.mids == ["/m/04rlf", "/m/09x0r"] and ds.classes == ["Music", "Speech"]
    clip = ds.clips[0]
    assert clip.labels == (0, 1) and len(clip.events) == 3
    frames = ds.frame_targets(clip, frames_per_second=10, num_frames=100)
    assert frames.shape == (100, 2) and frames.dtype == np.float32
    np.testing.assert_array_equal(np.flatnonzero(frames[:, 1]), list(range(10, 25)) + list(range(90, 100)))
    np.testing.assert_array_equal(np.flatnonzero(frames[:, 0]), [3])  # 20 ms event keeps one frame
    coarse = ds.frame_targets(clip, frames_per_second=1, num_frames=10)
    np.testing.assert_array_equal(coarse[:, 1], [0, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ds.targets(clip), [1, 1])


def test_strong_eval_keeps_train_vocabulary_and_drops_unknown_mids(tmp_path):
    root = strong_folder(tmp_path / "strong")
    with pytest.warns(UserWarning, match="1 events with MIDs outside"):
        ds = open_dataset(f"audioset-strong:{root}", split="eval")
    assert ds.mids == ["/m/04rlf", "/m/09x0r"] and ds.clips[0].events[0].label == 0 and len(ds.clips[0].events) == 1
    assert ds.load_audio(ds.clips[0], SR, 1.0).shape == (SR,)
    (root / "audioset_eval_strong.tsv").write_text("segment_id\tonset\toffset\tlabel\n")
    with pytest.raises(DatasetError, match=r"audioset_eval_strong.tsv: missing column\(s\) start_time_seconds"):
        open_dataset(f"audioset-strong:{root}", split="eval")


def test_strong_demo_frame_targets_match_listed_events(demo):
    ds = open_dataset(demo["sed"]["spec"])
    for clip in ds.clips[:5]:
        frames = ds.frame_targets(clip, 50, 50)
        for event in clip.events:
            assert frames[int(np.ceil(event.onset * 50)):int(event.offset * 50), event.label].all()
        assert frames.any(axis=0).nonzero()[0].tolist() == list(clip.labels)
    with pytest.raises(DatasetError, match="no strong labels"):
        open_dataset(demo["tagging"]["spec"]).frame_targets(clip, 50, 50)


# --- manifest ------------------------------------------------------------------------------------------------------


def test_manifest_multi_label_relative_paths_and_splits(tmp_path):
    noise_file(tmp_path / "clips" / "one.wav")
    noise_file(tmp_path / "clips" / "two.flac", seed=1)
    noise_file(tmp_path / "three.wav", seed=2)
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text('path,labels,split,device\n../clips/one.wav,"dog,cat",train,phone\n'
                        '../clips/two.flac,bird,train,mic\n../three.wav,dog;bird,eval,tablet\n')
    every = open_dataset(f"manifest:{manifest}")
    assert every.task.name == "tagging" and every.classes == ["bird", "cat", "dog"] and every.split is None
    assert [c.labels for c in every.clips] == [(1, 2), (0,), (0, 2)]
    assert every.ids == ["../clips/one", "../clips/two", "../three"]
    evaluate = open_dataset(f"manifest:{manifest}", split="evaluate")
    assert len(evaluate) == 1 and evaluate.classes == every.classes
    assert evaluate.seen_devices == ["mic", "phone"] and evaluate.unseen_devices == ["tablet"]
    assert evaluate.load_audio(evaluate.clips[0], 16000, 1.0).shape == (16000,)


def test_manifest_single_label_tsv_is_asc_and_errors_are_clear(tmp_path):
    noise_file(tmp_path / "a.wav")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\tfilename\tlabel\nclip-a\ta.wav\tpark\nclip-b\ta.wav\tbus\n")
    ds = open_dataset(f"manifest:{manifest}")
    assert ds.task.name == "asc" and ds.ids == ["clip-a", "clip-b"] and ds.classes == ["bus", "park"]
    with pytest.raises(DatasetError, match="no split column"):
        open_dataset(f"manifest:{manifest}", split="train")
    classes = tmp_path / "classes.txt"
    classes.write_text("bus\ntram\n")
    with pytest.raises(DatasetError, match=r"1 label\(s\) are not in the class list.*park"):
        open_dataset(f"manifest:{manifest}", classes=classes)
    (tmp_path / "bad.csv").write_text("path,scene\na.wav,park\n")
    with pytest.raises(DatasetError, match="bad.csv: no label column"):
        open_dataset(f"manifest:{tmp_path / 'bad.csv'}")
    (tmp_path / "dupe.csv").write_text("id,path,label\nx,a.wav,park\nx,a.wav,bus\n")
    with pytest.raises(DatasetError, match="1 clip ids occur more than once"):
        open_dataset(f"manifest:{tmp_path / 'dupe.csv'}")


# --- the entry point and identity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,message", [
    ("tau22", "is not FORMAT:PATH"),
    ("wav:/tmp/x", "unknown format 'wav'"),
    ("tau22:/no/such/folder", "not a folder"),
    ("manifest:/no/such.csv", "no such file"),
    ("audioset-hdf5:/no/such.hdf", "no such file or folder"),
])
def test_bad_specs_raise_dataset_error(spec, message):
    with pytest.raises(DatasetError, match=message):
        open_dataset(spec)


def test_unknown_option_is_refused(demo):
    with pytest.raises(DatasetError, match="format tau22 does not take option.*classes"):
        open_dataset(demo["asc"]["spec"], classes="x.csv")


def test_fingerprint_is_stable_moves_with_the_data_and_changes_with_it(demo, tmp_path):
    spec = demo["asc"]["spec"]
    first = open_dataset(spec).fingerprint()
    assert first == open_dataset(spec).fingerprint() and len(first) == 64
    assert first != open_dataset(spec, split="eval").fingerprint()
    moved = tmp_path / "moved"
    shutil.copytree(demo["asc"]["path"], moved)
    assert open_dataset(f"tau22:{moved}").fingerprint() == first
    victim = open_dataset(f"tau22:{moved}").clips[0]
    audio, rate = sf.read(victim.source)
    sf.write(victim.source, audio, rate, subtype="PCM_16")  # re-encoded: other size
    assert open_dataset(f"tau22:{moved}").fingerprint() != first


def test_fingerprint_changes_with_the_class_list(demo, tmp_path):
    spec = demo["tagging"]["spec"]
    classes = tmp_path / "classes.csv"
    original = Path(demo["tagging"]["path"]) / "metadata" / "class_labels_indices.csv"
    classes.write_text(original.read_text().replace("Beep", "Bleep"))
    assert open_dataset(spec, classes=classes).fingerprint() != open_dataset(spec).fingerprint()


def test_every_demo_dataset_decodes_every_clip(demo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for info in demo.values():
            for split in ("train", "eval"):
                ds = open_dataset(info["spec"], split=split)
                batch = np.stack([ds.load_audio(c, 16000, 1.0) for c in ds.clips])
                assert batch.shape == (len(ds), 16000) and (np.abs(batch).max(axis=1) > 1e-3).all()


def test_clip_length_comes_from_the_metadata_else_from_the_audio(demo, tmp_path):
    assert open_dataset(demo["asc"]["spec"]).clip_seconds() == pytest.approx(1.0)
    assert open_dataset(demo["tagging"]["spec"], split="train").clip_seconds() == pytest.approx(1.0, abs=0.06)  # mp3
    noise_file(tmp_path / "long.wav", seconds=2.5)
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nbroken.wav,a\nlong.wav,b\n")
    assert open_dataset(f"manifest:{manifest}").clip_seconds() == pytest.approx(2.5)
    manifest.write_text("path,label,duration\nlong.wav,a,10\n")
    assert open_dataset(f"manifest:{manifest}").clip_seconds() == 10.0
    manifest.write_text("path,label\nbroken.wav,a\n")
    with pytest.raises(DatasetError, match="pass --seconds"):
        open_dataset(f"manifest:{manifest}").clip_seconds()


def test_relative_spec_is_made_absolute_so_workers_can_reopen_it(demo, monkeypatch):
    root = Path(demo["asc"]["path"])
    monkeypatch.chdir(root.parent)
    ds = open_dataset(f"tau22:{root.name}", split="eval")
    assert ds.spec == f"tau22:{root}"
    monkeypatch.chdir("/")
    assert open_dataset(ds.spec, split="eval").ids == ds.ids
