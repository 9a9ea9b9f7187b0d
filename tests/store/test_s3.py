"""Logit stores on S3, end to end over HTTP: moto's standalone S3 server on a loopback port stands in for S3.

The server is reached the way README.md's "Scaling out" tells users to reach theirs: through the environment
variables botocore reads (``backends.S3_SETTINGS``), which the dask worker processes of ``kd teach --workers 2``
and the DataLoader workers of ``kd distill`` inherit. Every chunk of ``kd teach`` is written by a dask worker
process, so a store that verifies proves the workers reached the endpoint on their own.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import s3fs
from backends import BUCKET, S3_SETTINGS
from click.testing import CliRunner

from cli import main
from logit_store import LogitStore, storage

pytestmark = pytest.mark.slow

TEACHER = "passt_tiny"
CHUNK_SIZE = 8  # 28 training clips of the demo data: 4 chunks, so two workers share the job


@pytest.fixture(scope="module")
def fs(s3):
    return s3fs.S3FileSystem()


def kd(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _teach_args(spec: str, url: str, tracking_uri: str) -> list[str]:
    return ["teach", "--dataset", spec, "--teacher", TEACHER, "--store", url, "--workers", "2",
            "--chunk-size", str(CHUNK_SIZE), "--batch-size", "4", "--device", "cpu", "--tracking-uri", tracking_uri]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One MLflow database for the module (each new one costs seconds of schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def taught(s3, demo_asc, tracking):
    """A store on S3 filled by ``kd teach --workers 2``, with that command's result."""
    url = f"s3://{BUCKET}/asc.zarr"
    result = kd(*_teach_args(demo_asc["spec"], url, tracking))
    assert result.exit_code == 0, result.output
    return {"url": url, "result": result, "spec": demo_asc["spec"]}


def _copy(fs, url: str, name: str) -> str:
    """A copy of the store at ``url`` under ``name`` in the bucket, made through S3 (tests below damage copies)."""
    fs.copy(url.removeprefix("s3://"), f"{BUCKET}/{name}", recursive=True)
    return f"s3://{BUCKET}/{name}"


def _chunk_object(url: str, array: str, chunk: int) -> str:
    """The S3 path of the object of ``array`` (a teacher array such as ``clip``) that holds store chunk ``chunk``."""
    group = storage.open_group(url, "r")[f"teachers/{TEACHER}"]
    (coords,) = storage.chunk_coords_at(group[array], 0, chunk)
    return f"{url.removeprefix('s3://')}/teachers/{TEACHER}/{array}/{storage.chunk_key(group[array], coords)}"


def test_two_workers_teach_into_s3_and_the_store_verifies(taught, fs):
    assert "4 chunks run, 0 already done" in taught["result"].output
    done = fs.ls(f"{BUCKET}/asc.zarr/teachers/{TEACHER}/done/c")
    assert sorted(Path(p).name for p in done) == ["0", "1", "2", "3"]
    verify = kd("store", "verify", taught["url"])
    assert verify.exit_code == 0 and "is complete and readable" in verify.output
    store = LogitStore.open(taught["url"])
    logits = store.read(store.clip_ids, teachers=[TEACHER])
    assert logits.shape == (28, 10) and np.isfinite(logits).all()


def test_store_info_counts_the_objects_on_s3(taught, fs):
    result = kd("store", "info", "--json", taught["url"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["url"] == taught["url"] and info["clips"] == 28 and info["num_chunks"] == 4
    assert info["fraction_done"] == 1.0 and info["teachers"][TEACHER]["chunks_done"] == 4
    assert info["bytes_on_disk"] == fs.du(f"{BUCKET}/asc.zarr") > 0


def test_rerun_recomputes_only_the_chunks_an_interrupted_job_left_unfinished(taught, fs, tracking):
    url = _copy(fs, taught["url"], "resume.zarr")
    root = f"{BUCKET}/resume.zarr/teachers/{TEACHER}"
    kept = {k: fs.cat(f"{root}/done/c/{k}") for k in (0, 2)}
    # a job killed mid-way: chunk 1 written but not marked done, chunk 3 half written and not marked done
    fs.rm([f"{root}/done/c/1", f"{root}/done/c/3"])
    fs.pipe(_chunk_object(url, "clip", 3), b"half an object")
    assert LogitStore.open(url).done_chunks(TEACHER).tolist() == [True, False, True, False]

    result = kd(*_teach_args(taught["spec"], url, tracking))
    assert result.exit_code == 0, result.output
    assert "2 chunks run, 2 already done" in result.output
    assert {k: fs.cat(f"{root}/done/c/{k}") for k in kept} == kept  # finished chunks were not rewritten
    assert kd("store", "verify", url).exit_code == 0
    resumed, original = LogitStore.open(url), LogitStore.open(taught["url"])
    np.testing.assert_array_equal(resumed.read(resumed.clip_ids, teachers=[TEACHER]),
                                  original.read(original.clip_ids, teachers=[TEACHER]))


def test_verify_reports_damaged_and_lost_chunk_objects(taught, fs):
    url = _copy(fs, taught["url"], "damaged.zarr")
    corrupt, lost = _chunk_object(url, "clip", 1), _chunk_object(url, "clip", 2)
    data = bytearray(fs.cat(corrupt))
    data[len(data) // 2] ^= 0xFF
    fs.pipe(corrupt, bytes(data))
    fs.rm(lost)
    result = kd("store", "verify", url)
    assert result.exit_code == 1
    assert re.search(rf"corrupt-chunk.*{TEACHER}:chunk 1:", result.output)
    assert re.search(rf"missing-chunk.*{TEACHER}:chunk 2:", result.output)
    assert "2 problem(s)" in result.output


def test_distill_trains_from_the_s3_store(taught, tracking, tmp_path):
    import mlflow

    result = kd("distill", "--dataset", taught["spec"], "--store", taught["url"], "--teachers", TEACHER,
                "--student", "cp_mobile_tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                "--decode-workers", "1", "--out", str(tmp_path / "run"), "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    client = mlflow.MlflowClient(tracking)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string="params.student = 'cp_mobile_tiny'")
    assert run.data.tags["store"] == taught["url"] and run.data.params["teachers"] == TEACHER


def test_a_missing_bucket_is_a_one_line_error(s3, demo_asc, tracking):
    result = CliRunner().invoke(main, _teach_args(demo_asc["spec"], "s3://no-such-bucket/asc.zarr", tracking))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "no-such-bucket" in result.output
    assert kd("store", "info", "s3://no-such-bucket/asc.zarr").exit_code == 2


def test_readme_names_the_settings_used_here():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    assert [name for name in S3_SETTINGS if f"`{name}`" not in section] == []
