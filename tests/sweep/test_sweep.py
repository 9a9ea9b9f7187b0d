"""``kd sweep``: a grid of distillations that resumes where it stopped and ends with the kd compare table."""
from __future__ import annotations

import json

import pytest

from kd.core.checkpoints import TeacherSpec
from kd.sweep.grid import PointResult, SweepCallbacks, SweepConfig, SweepPoint, expand, sweep
from kd.teach.config import TeachConfig
from kd.teach.run import run_teach
from kd_errors import KdError

OPTIONS = {"epochs": 1, "batch_size": 8, "log_model": False}


@pytest.fixture(scope="module")
def store(demo_asc, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-store")
    path = str(folder / "store.zarr")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        run_teach(TeachConfig(dataset=demo_asc["spec"], store=path, teachers=(TeacherSpec("passt_tiny"),),
                              chunk_size=16, tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"))
    return path


def test_the_grid_is_every_combination_of_its_choices():
    cfg = SweepConfig("d", "o", ("a", "b"), ("t1+t2", "none"), store="s", seeds=2, settings=(("kd_lambda", ("0.1", "0.5")),))
    points = expand(cfg)
    assert len(points) == 16 and len({p.name for p in points}) == 16
    assert SweepPoint("a", "t1+t2", 1, (("kd_lambda", 0.5),)) in points
    assert SweepPoint("a", "t1+t2", 1, (("kd_lambda", 0.5),)).name == "a_teachers-t1-t2_seed1_kd_lambda-0.5"
    with pytest.raises(KdError, match="--set seed: not an option a sweep can vary"):
        SweepConfig("d", "o", ("a",), ("none",), settings=(("seed", ("1",)),))
    with pytest.raises(KdError, match="need --store"):
        SweepConfig("d", "o", ("a",), ("t1",))
    assert [p.seed for p in expand(SweepConfig("d", "o", ("a",), ("none",), seeds=2, first_seed=5))] == [5, 6]
    with pytest.raises(KdError, match="--set kd_lambda=high: not a float"):
        expand(SweepConfig("d", "o", ("a",), ("none",), settings=(("kd_lambda", ("high",)),)))


@pytest.mark.slow
def test_a_sweep_resumes_after_a_kill_and_compares_its_cells(demo_asc, store, tmp_path):
    cfg = SweepConfig(demo_asc["spec"], str(tmp_path / "sweep"), ("cp_mobile_tiny", "cp_resnet"), ("passt_tiny", "none"),
                      store=store, seeds=2, options=OPTIONS, device="cpu", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")

    class Killed(Exception):
        pass

    done = []

    def kill_after_three(point, record):
        done.append(point)
        if len(done) == 3:
            raise Killed

    with pytest.raises(Killed):
        sweep(cfg, SweepCallbacks(on_point=kill_after_three))
    result = sweep(cfg)
    assert len(result.ran) == 5 and not set(result.ran) & set(done)  # only the missing points ran
    assert len(result.run_ids) == 8 and sweep(cfg).ran == []  # a finished sweep runs nothing
    table = result.table
    assert sorted(r.student for r in table.rows) == ["cp_mobile_tiny", "cp_resnet"]
    assert set(table.columns) == {"passt_tiny", "none"}
    for row in table.rows:
        for column in table.columns:
            cell = table.cell(row, column)
            assert cell.n == 2 and cell.std is not None
    for point in result.points:  # what a finished point keeps: its run, and the scores of the model it hands on
        record = PointResult.from_json((tmp_path / "sweep" / point.name / "point.json").read_text())
        assert record == result.results[point.name] and record.point == point
        assert 0 <= record.final["accuracy"] <= 1 and record.params > 0 and record.macs > 0
    parent = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["parent_run_id"]
    assert parent == result.parent_run_id


@pytest.mark.slow
def test_two_local_workers_with_a_gpu_token_each_run_two_points_at_once(demo_asc, tmp_path):
    cfg = SweepConfig(demo_asc["spec"], str(tmp_path / "sweep"), ("cp_mobile_tiny",), ("none",), seeds=2,
                      options={**OPTIONS, "epochs": 2}, parallel=2, device="cpu",
                      tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    result = sweep(cfg)
    spans = [json.loads((tmp_path / "sweep" / p.name / "point.json").read_text()) for p in result.points]
    assert len(result.ran) == 2
    first, second = sorted(spans, key=lambda r: r["started"])
    assert second["started"] < first["finished"]  # they overlapped


@pytest.mark.slow
def test_the_sweep_command_adds_later_seeds_to_the_same_grid(demo_asc, tmp_path):
    from click.testing import CliRunner

    from cli import main

    def run(*seeds):
        return CliRunner().invoke(main, ["sweep", "--dataset", demo_asc["spec"], "--teachers", "none", "--students",
                                         "cp_mobile_tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                                         "--out", str(tmp_path / "sweep"), "--tracking-uri",
                                         f"sqlite:///{tmp_path / 'm.db'}", *seeds])

    first = run("--seeds", "1")
    assert first.exit_code == 0, first.output
    assert "1 of 1 points ran now" in first.output and "(n=" not in first.output
    later = run("--seeds", "2", "--first-seed", "1")
    assert later.exit_code == 0 and "2 of 2 points ran now" in later.output and "(n=2)" in later.output
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == [
        f"cp_mobile_tiny_teachers-none_seed{s}" for s in range(3)]
