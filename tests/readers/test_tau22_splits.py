"""DCASE'24's data-efficient training subsets of TAU22: ``--split split5`` ... ``split100`` from the official files."""
from __future__ import annotations

from pathlib import Path

import pytest

from kd.data import DatasetError, open_dataset

SCENES = ("airport", "bus", "park")
DEVICES = ("a", "b", "s1")


def tau22_layout(root: Path, clips_per_scene: int = 20) -> list[str]:
    """meta.csv and fold files of a TAU22 folder (no audio: opening a split reads metadata only)."""
    rows = [(f"audio/{scene}-lyon-{i}-0-{DEVICES[i % 3]}.wav", scene, f"lyon-{i}", DEVICES[i % 3])
            for scene in SCENES for i in range(clips_per_scene)]
    (root / "evaluation_setup").mkdir(parents=True)
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n"
                                   + "".join("\t".join(r) + "\n" for r in rows))
    train = [r for r in rows if int(r[2].split("-")[1]) % 5]
    for name, part in (("fold1_train.csv", train), ("fold1_evaluate.csv", [r for r in rows if r not in train])):
        (root / "evaluation_setup" / name).write_text("filename\tscene_label\n"
                                                      + "".join(f"{r[0]}\t{r[1]}\n" for r in part))
    return [r[0] for r in train]


def write_splits(folder: Path, train: list[str]) -> dict[int, list[str]]:
    """Nested subsets of ``train`` as the official split files, smallest a subset of the larger ones."""
    folder.mkdir(parents=True, exist_ok=True)
    subsets = {p: train[: max(1, round(len(train) * p / 100))] for p in (5, 10, 25, 50, 100)}
    for p, files in subsets.items():
        (folder / f"split{p}.csv").write_text("filename\tscene_label\n" + "".join(f"{f}\tx\n" for f in files))
    return subsets


@pytest.mark.parametrize("folder", ["split_setup", "evaluation_setup"])
def test_each_split_file_opens_its_subset(tmp_path, folder):
    train = tau22_layout(tmp_path)
    subsets = write_splits(tmp_path / folder, train)
    full = open_dataset(f"tau22:{tmp_path}", split="train")
    for percent, files in subsets.items():
        ds = open_dataset(f"tau22:{tmp_path}", split=f"split{percent}")
        assert ds.split == f"split{percent}" and [c.id for c in ds.clips] == [Path(f).stem for f in files]
        assert ds.classes == full.classes and ds.seen_devices == full.seen_devices
    assert len(open_dataset(f"tau22:{tmp_path}", split="split100").clips) == len(full.clips)


def test_a_missing_split_file_is_one_line_naming_where_it_was_looked_for(tmp_path):
    tau22_layout(tmp_path)
    with pytest.raises(DatasetError, match=r"split 'split25' needs the DCASE'24 split file split25.csv in "
                                           r".*split_setup or .*evaluation_setup") as info:
        open_dataset(f"tau22:{tmp_path}", split="split25")
    assert "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="split5, split10, split25, split50, split100"):
        open_dataset(f"tau22:{tmp_path}", split="split30")


def test_a_malformed_split_file_is_named(tmp_path):
    train = tau22_layout(tmp_path)
    write_splits(tmp_path / "split_setup", train)
    bad = tmp_path / "split_setup" / "split10.csv"
    bad.write_text(bad.read_text().replace("filename", "file"))
    with pytest.raises(DatasetError, match=r"split10.csv: missing column\(s\) filename"):
        open_dataset(f"tau22:{tmp_path}", split="split10")
    bad.write_text("filename\nno/such.wav\n")
    with pytest.raises(DatasetError, match=r"split10.csv: 1 filename\(s\) are not in meta.csv \(e.g. no/such.wav\)"):
        open_dataset(f"tau22:{tmp_path}", split="split10")
    bad.write_text(f"filename\n{train[0]}\n{train[0]}\n")
    with pytest.raises(DatasetError, match="split10.csv: lists a filename more than once"):
        open_dataset(f"tau22:{tmp_path}", split="split10")
