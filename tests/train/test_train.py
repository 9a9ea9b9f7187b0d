"""The training engine: schedule, checkpoints and an exact resume."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd.tasks import ASC
from kd.train.engine import OptimConfig, Trainer, WarmupRampDown
from kd.train.loss import DistillLoss
from kd_errors import KdError
from layers import read_checkpoint


def test_schedule_warms_up_holds_and_ramps_down():
    s = WarmupRampDown(total_steps=100, warmup_steps=10, rampdown_start=0.5, final_factor=0.01)
    assert s(0) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert s(5) < s(9) < 1.0
    assert s(10) == s(49) == 1.0
    assert s(75) == pytest.approx(1 - 0.99 * 0.5)
    assert s(100) == pytest.approx(0.01)


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :3].argmax(dim=1))
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, num_workers=0)


def _trainer(tmp_path, epochs=3, eval_every=1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    cfg = OptimConfig(epochs=epochs, lr=1e-2, warmup_epochs=0.5, eval_every=eval_every)
    return Trainer(model, cfg, steps_per_epoch=4, out_dir=tmp_path, primary_metric="accuracy", meta={"name": "mlp"})


def _step(model, batch):
    x, y = batch
    return DistillLoss(ASC)(model(x), nn.functional.one_hot(y, 3).float())


def _evaluate(loader):
    def evaluate(model):
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
        return {"accuracy": correct / 64}

    return evaluate


def test_training_learns_and_writes_checkpoints(tmp_path):
    loader = _problem()
    trainer = _trainer(tmp_path, epochs=4)
    history = trainer.fit(loader, _step, _evaluate(loader))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    state = read_checkpoint(tmp_path / "best.pt")
    assert state["meta"] == {"name": "mlp"} and state["best"] == max(h["accuracy"] for h in history)


def test_eval_every_evaluates_every_nth_epoch_and_the_last(tmp_path):
    loader = _problem()
    evaluated = []

    def evaluate(model):
        evaluated.append(len(evaluated))
        return _evaluate(loader)(model)

    history = _trainer(tmp_path, epochs=5, eval_every=2).fit(loader, _step, evaluate)
    assert [h["epoch"] for h in history if "accuracy" in h] == [2, 4, 5]
    assert len(evaluated) == 3 and all("train_loss" in h for h in history)
    state = read_checkpoint(tmp_path / "best.pt")
    assert state["best"] == max(h["accuracy"] for h in history if "accuracy" in h)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    loader = _problem()
    full = _trainer(tmp_path / "full")
    full.fit(loader, _step, _evaluate(loader))

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch, record):
        if epoch == 1:
            raise Killed

    first = _trainer(tmp_path / "resumed")
    with pytest.raises(Killed):
        first.fit(loader, _step, _evaluate(loader), on_epoch_end=kill_after_first_epoch)
    second = _trainer(tmp_path / "resumed")
    assert second.resume()
    assert second.epoch == 1
    second.fit(loader, _step, _evaluate(loader))
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in second.history]


def test_resume_refuses_other_settings(tmp_path):
    loader = _problem()
    _trainer(tmp_path, epochs=1).fit(loader, _step, _evaluate(loader))
    other = _trainer(tmp_path, epochs=5)
    with pytest.raises(KdError, match=r"other training settings \(epochs\)"):
        other.resume()


def test_resume_takes_settings_added_since_the_checkpoint_at_their_defaults(tmp_path):
    """A run killed before an option existed behaved as its default does: a newer kd resumes it."""
    loader = _problem()
    _trainer(tmp_path, epochs=1).fit(loader, _step, _evaluate(loader))
    path = tmp_path / "last.pt"
    state = torch.load(path, weights_only=True)
    del state["optim_config"]["average_from"]  # as written before checkpoint averaging existed
    torch.save(state, path)
    assert _trainer(tmp_path, epochs=1).resume()


def _bn_trainer(tmp_path, average_from, epochs=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    cfg = OptimConfig(epochs=epochs, lr=1e-2, warmup_epochs=0.5, average_from=average_from)
    return Trainer(model, cfg, steps_per_epoch=4, out_dir=tmp_path, primary_metric="accuracy", meta={"name": "mlp"})


def test_the_averaged_checkpoint_is_the_mean_of_the_epochs_weights(tmp_path):
    """average_from=2 of 4 epochs: averaged.pt holds the mean of the weights saved after epochs 2, 3 and 4, with
    BatchNorm statistics of its own, and the scores of that averaged model."""
    loader = _problem()
    saved = []
    trainer = _bn_trainer(tmp_path, average_from=2)
    trainer.fit(loader, _step, _evaluate(loader),
                on_epoch_end=lambda epoch, record: saved.append(read_checkpoint(tmp_path / "last.pt")["model"]))
    averaged = read_checkpoint(tmp_path / "averaged.pt")
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"):
        torch.testing.assert_close(averaged["model"][key], torch.stack([s[key] for s in saved[1:]]).mean(0))
    assert not torch.equal(averaged["model"]["1.running_mean"], saved[-1]["1.running_mean"])  # re-estimated
    assert averaged["averaged_metrics"] == trainer.averaged_metrics and "accuracy" in trainer.averaged_metrics
    # the running mean survives a kill: a run resumed after epoch 3 averages to the same weights
    class Killed(Exception):
        pass

    def kill_after_third(epoch, record):
        if epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        _bn_trainer(tmp_path / "resumed", average_from=2).fit(loader, _step, _evaluate(loader),
                                                              on_epoch_end=kill_after_third)
    resumed = _bn_trainer(tmp_path / "resumed", average_from=2)
    assert resumed.resume() and resumed.epoch == 3
    resumed.fit(loader, _step, _evaluate(loader))
    again = read_checkpoint(tmp_path / "resumed" / "averaged.pt")["model"]
    for key, value in averaged["model"].items():
        torch.testing.assert_close(again[key], value)


def test_averaging_options_are_checked():
    from kd.train.job import TrainingOptions

    assert TrainingOptions(dataset="d", out="o", epochs=10, average_last=3).optim().average_from == 8
    assert TrainingOptions(dataset="d", out="o", epochs=10, swa_from=6).optim().averaged_epochs == 5
    with pytest.raises(KdError, match="give one"):
        TrainingOptions(dataset="d", out="o", average_last=2, swa_from=3).optim()
    with pytest.raises(KdError, match="from 1 to 10"):
        OptimConfig(epochs=10, average_from=11)
