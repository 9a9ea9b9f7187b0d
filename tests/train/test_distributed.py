"""kd distill under torchrun: ranks share out the data, rank 0 alone checkpoints and tracks."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from kd.train.loaders import DistributedWeightedSampler
from layers import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_distributed_weighted_sampler_shares_one_balanced_draw_between_ranks():
    weights = torch.tensor([1.0, 1.0, 8.0, 0.0], dtype=torch.double)
    ranks = [DistributedWeightedSampler(weights, 2001, rank, 2, seed=3) for rank in range(2)]
    draws = [list(sampler) for sampler in ranks]
    assert [len(d) for d in draws] == [len(s) for s in ranks] == [1001, 1001]
    assert draws[0] == list(DistributedWeightedSampler(weights, 2001, 0, 2, seed=3))  # every rank agrees on the draw
    counts = Counter(draws[0] + draws[1])
    assert counts[3] == 0 and 0.75 < counts[2] / 2002 < 0.85  # drawn in proportion to the weights
    for sampler in ranks:
        sampler.set_epoch(1)
    assert [list(s) for s in ranks] != draws  # a new draw each epoch


@pytest.mark.slow
def test_torchrun_distill_trains_one_model_and_one_mlflow_run(demo_asc, tmp_path, tracking_uri):
    import mlflow

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "cli", "distill", "--dataset", demo_asc["spec"], "--teachers", "none",
               "--student", "cp_mobile_tiny", "--epochs", "2", "--batch-size", "8", "--device", "cpu",
               "--out", str(out), "--tracking-uri", tracking_uri]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    state = read_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2
    client = mlflow.MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "accuracy")] == [1, 2]
