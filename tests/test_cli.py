"""The command line: help, one-line user errors, store inspection and verification."""
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from cli import main
from logit_store import LogitStore


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_every_command_group():
    result = _run("--help")
    assert result.exit_code == 0
    for command in ("demo-data", "teach", "train-teacher", "distill", "eval", "predict", "export", "complexity", "store",
                    "teachers", "quickstart"):
        assert command in result.output


def test_distill_offers_every_view_mode_the_library_has():
    from kd.options import VIEW_MODES

    (views,) = [p for p in main.commands["distill"].params if p.name == "views"]
    assert tuple(views.type.choices) == VIEW_MODES  # cli lists them without importing torch for --help


def test_the_option_vocabularies_match_the_libraries_that_check_them():
    from kd.options import SPACES, TASK_NAMES
    from kd.tasks import TASKS
    from logit_store.ensemble import SPACES as STORE_SPACES

    assert tuple(TASKS) == TASK_NAMES
    assert SPACES == STORE_SPACES  # the store checks its own; kd.options mirrors them for the command line


def test_user_mistakes_end_in_one_line(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("taken")
    result = _run("demo-data", str(tmp_path / "full"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error:") and "not empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # rich may wrap a long line once
    result = _run("store", "info", str(tmp_path / "nope.zarr"))
    assert result.exit_code == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


def _small_store(path: Path) -> LogitStore:
    ids = [f"clip{i}" for i in range(10)]
    store = LogitStore.create(str(path), ids, ["a", "b", "c"], dataset="unit", dataset_fingerprint="f", chunk_size=5)
    store.add_teacher("t", codec="f16", attrs={"num_classes": 3})
    for chunk in range(2):
        store.write_chunk("t", chunk, np.random.default_rng(chunk).normal(size=(5, 3)).astype(np.float32))
    return store


def test_store_info_json_and_verify(tmp_path):
    path = tmp_path / "s.zarr"
    _small_store(path)
    info = json.loads(_run("store", "info", str(path), "--json").output)
    assert info["clips"] == 10 and info["teachers"]["t"]["fraction_done"] == 1.0
    table = _run("store", "info", str(path)).output
    assert "f16" in table and "100%" in table
    ok = _run("store", "verify", str(path))
    assert ok.exit_code == 0 and "complete" in ok.output
    chunk_files = [p for p in (path / "teachers" / "t" / "clip").rglob("*") if p.is_file() and p.name != "zarr.json"]
    chunk_files[0].write_bytes(b"garbage")
    bad = _run("store", "verify", str(path))
    assert bad.exit_code == 1 and "corrupt" in bad.output


def test_teachers_lists_registered_models():
    result = _run("teachers", "passt_tiny*")
    assert result.exit_code == 0 and "passt_tiny_frame" in result.output and "ast_tiny" not in result.output


def test_complexity_json_gives_plain_counts():
    result = _run("complexity", "cp_mobile", "--seconds", "1", "--json")
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert isinstance(figures["params"], int) and isinstance(figures["macs"], int)
    assert figures["params"] <= 128_000 and figures["macs"] <= 30_000_000
