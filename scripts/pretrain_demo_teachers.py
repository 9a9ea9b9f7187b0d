"""Pretrain the demo teachers: ``passt_tiny``, ``ast_tiny`` and ``cp_resnet`` on a large synthetic scene corpus.

Real teachers know more than the task's data holds because they were pretrained on AudioSet. The demo's
stand-in is a corpus made by ``kd demo-data``'s own scene generators (:mod:`kd.demo.data`), many times larger
than the quick start's 600 clips and disjoint from them: another seed (so other recording locations and other
renders; ``kd quickstart`` uses seeds 0 and up, the corpus seed 2024), ``--locations`` locations per scene, and
``--devices`` simulated recording devices drawn at random (EQ, port echoes, compression, self-noise: the
:class:`kd.demo.synth.DeviceResponse` model), none of them one of the demo's nine. A held-out part of the
corpus (other locations, other devices) scores the teachers; the quick start's clips are never seen.

Each teacher trains with kd's augmented forward (:class:`kd.train.forward.AugmentedForward`: the frontend's
SpecAugment masks, optional mixup and Freq-MixStyle; random gain on the waveform), the task's label loss and
:class:`kd.train.engine.Trainer` (AdamW, warm-up and ramp-down, a checkpoint per epoch, so a killed run resumes with
the same command). The best epoch on the held-out part is written as
a float16 state dict to ``--out/<name>_demo.pt``; its sha256 goes into the registry cfg of the teacher
(``teachers/passt.py``, ``teachers/ast.py``, ``teachers/cnn.py``), from where ``create_teacher(name, pretrained=True)`` and
``teachers.release_path(name)`` load it through the same strict checkpoint path as the official releases.

The corpus is generated in memory by ``--workers`` processes and cached in ``--workdir`` (float16 audio at the
teachers' rates), so a rerun trains without generating again. The last line is one JSON object: corpus size,
wall time per stage, the teachers' held-out accuracy and the release files' sha256.

    python scripts/pretrain_demo_teachers.py [--clips 24000] [--teachers passt_tiny ast_tiny cp_resnet] [--workdir DIR]

The shipped releases were made on a 2-core CPU with the corpus generated first and one process per teacher
(``--threads 1`` each; the thread count changes float rounding, so it is part of what reproduces a file bit for
bit; see BENCHMARKS.md for the times and the held-out accuracy per epoch)::

    python scripts/pretrain_demo_teachers.py --generate-only
    python scripts/pretrain_demo_teachers.py --teachers passt_tiny --threads 1 &
    python scripts/pretrain_demo_teachers.py --teachers ast_tiny --threads 1 &
    python scripts/pretrain_demo_teachers.py --teachers cp_resnet --threads 1

The transformer releases then went on in three more stages, each from the best weights of the one before
(``--init WORKDIR/<name>[-stage2]/best.pt --stage stage2|stage3``, then ``--init teachers/releases/<name>_demo.pt
--stage stage4`` from the stage-3 release, with the options in ``teachers._registry.DEMO_STAGES`` and the model's
cfg, also recorded in each release's ``pretraining`` cfg); a release is its last stage's best held-out epoch.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kd.demo import data as demo
from kd.demo import synth
from kd.tasks import ASC
from kd.train.augment import mix, mixup_params, random_gain
from kd.train.engine import OptimConfig, Trainer
from kd.train.forward import AugmentedForward
from kd.train.loss import DistillLoss, LossTerms
from layers import read_checkpoint, sha256_file
from teachers import create_teacher, release_path

SOURCE_RATE = demo.DEMO_DEFAULTS["asc"]["sample_rate"]  # rendered as the demo renders (44.1 kHz), then resampled
RATES = {"passt_tiny": 32000, "ast_tiny": 16000, "cp_resnet": 32000}
# constructor overrides in pretraining only (no weight depends on them): PaSST's structured patchout, wider than
# the fine-tuning default, as the AudioSet releases were trained (40 of 99 time and 4 of 12 frequency positions)
PRETRAINING_KWARGS = {"passt_tiny": {"s_patchout_t": 3, "s_patchout_f": 4}, "ast_tiny": {}, "cp_resnet": {}}
# the shipped releases' epochs: AST costs twice PaSST's step (no patchout), so it gets fewer in the same time; the
# CNN learns fastest per step
EPOCHS = {"passt_tiny": 14, "ast_tiny": 8, "cp_resnet": 6}
SCENES = list(demo.SCENES)


@dataclass(frozen=True)
class Corpus:
    """The plan of the corpus: which location, device and segment each clip comes from."""

    seed: int
    clips: int
    locations: int  # per scene
    devices: int
    heldout_fraction: float

    def device(self, k: int) -> synth.DeviceResponse:
        """Simulated device ``k``: a random strength (how far from flat) and compression, from the corpus seed."""
        rng = np.random.default_rng([self.seed, 2, k])
        strength, compress = rng.uniform(0.05, 1.0), bool(rng.random() < 0.5)
        return synth.DeviceResponse(rng, SOURCE_RATE, strength, compress)

    def heldout_locations(self) -> int:
        return max(1, round(self.locations * self.heldout_fraction))

    def heldout_devices(self) -> int:
        return max(1, round(self.devices * self.heldout_fraction))

    def plan(self) -> list[tuple[int, int, int, bool]]:
        """``(scene, location, device, held_out)`` per clip: held-out clips use held-out locations and devices."""
        rng = np.random.default_rng([self.seed, 3])
        n_heldout = round(self.clips * self.heldout_fraction)
        rows = []
        for i in range(self.clips):
            held_out = i < n_heldout
            loc_lo, loc_hi = (0, self.heldout_locations()) if held_out else (self.heldout_locations(), self.locations)
            dev_lo, dev_hi = (0, self.heldout_devices()) if held_out else (self.heldout_devices(), self.devices)
            rows.append((i % len(SCENES), int(rng.integers(loc_lo, loc_hi)), int(rng.integers(dev_lo, dev_hi)),
                         held_out))
        return rows


_WORKER: dict = {}


def _init_worker(corpus: Corpus) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng([corpus.seed, 4])
    locations = {(s, k): demo.new_location(rng, scene, s * corpus.locations + k)
                 for s, scene in enumerate(SCENES) for k in range(corpus.locations)}
    _WORKER.update(corpus=corpus, locations=locations, devices={}, plan=corpus.plan())


def _render(i: int) -> dict[int, np.ndarray]:
    corpus, plan = _WORKER["corpus"], _WORKER["plan"]
    scene, loc, dev, _ = plan[i]
    if dev not in _WORKER["devices"]:
        _WORKER["devices"][dev] = corpus.device(dev)
    key = [corpus.seed, 1, scene, loc, i]
    audio = demo.record_scene(_WORKER["locations"][(scene, loc)], _WORKER["devices"][dev], key, 1 + dev,
                              SOURCE_RATE, SOURCE_RATE)
    return {rate: soxr.resample(audio, SOURCE_RATE, rate, quality="HQ").astype(np.float16)
            for rate in sorted(set(RATES.values()))}


def generate(corpus: Corpus, workdir: Path, workers: int) -> dict[int, np.ndarray]:
    """The corpus audio per sample rate ``[clips, rate]`` (float16), generated once and cached in ``workdir``."""
    tag = f"corpus-s{corpus.seed}-n{corpus.clips}-l{corpus.locations}-d{corpus.devices}"
    paths = {rate: workdir / f"{tag}-{rate}.npy" for rate in sorted(set(RATES.values()))}
    if all(p.is_file() for p in paths.values()):
        return {rate: np.load(p, mmap_mode="r") for rate, p in paths.items()}
    arrays = {rate: np.zeros((corpus.clips, rate), np.float16) for rate in paths}
    with multiprocessing.get_context("fork").Pool(workers, _init_worker, (corpus,)) as pool:
        for i, audio in enumerate(pool.imap(_render, range(corpus.clips), chunksize=64)):
            for rate, x in audio.items():
                arrays[rate][i] = x
            if (i + 1) % 2000 == 0:
                print(f"generated {i + 1} of {corpus.clips} clips", flush=True)
    for rate, path in paths.items():
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arrays[rate])
        tmp.rename(path)
    return arrays


class CorpusClips(torch.utils.data.Dataset):
    """Items of the corpus in kd's training-batch layout (``audio``, one-hot ``target``, ``index``, ``device``),
    with the teacher's ``logits`` of the clip where ``logits`` (``[clips, classes]``, by corpus row) is given."""

    def __init__(self, audio: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 logits: np.ndarray | None = None) -> None:
        self.audio, self.labels, self.indices, self.logits = audio, labels, indices, logits

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        row = int(self.indices[i])
        target = np.zeros(len(SCENES), np.float32)
        target[self.labels[row]] = 1.0
        item = {"audio": torch.from_numpy(np.asarray(self.audio[row], np.float32)), "target": torch.from_numpy(target),
                "index": i, "device": ""}
        if self.logits is not None:
            item["logits"] = torch.from_numpy(self.logits[row])
        return item


@torch.inference_mode()
def accuracy(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> dict[str, float]:
    model.eval()
    right = total = 0
    for batch in loader:
        logits = model(batch["audio"].to(device)).clip
        right += int((logits.argmax(-1).cpu() == batch["target"].argmax(-1)).sum())
        total += len(logits)
    return {"accuracy": right / total}


@torch.inference_mode()
def release_logits(name: str, audio: np.ndarray, workdir: Path, device: torch.device) -> np.ndarray:
    """The logits ``[clips, classes]`` of release ``name`` on every corpus clip, computed once and cached."""
    model = create_teacher(name, pretrained=True).to(device).eval()
    path = workdir / f"logits-{name}-{sha256_file(release_path(name))[:12]}-n{len(audio)}.npy"
    if path.is_file():
        return np.load(path)
    logits = np.concatenate([
        model(torch.from_numpy(np.asarray(audio[i:i + 256], np.float32)).to(device)).clip.float().cpu().numpy()
        for i in range(0, len(audio), 256)])
    np.save(path.with_suffix(".tmp.npy"), logits)
    path.with_suffix(".tmp.npy").rename(path)
    return logits


def pretrain(name: str, audio: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, heldout_rows: np.ndarray,
             args: argparse.Namespace, device: torch.device,
             logits: np.ndarray | None = None) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train ``name`` on the corpus, from scratch or from ``args.init``, on the labels and, where ``logits`` is
    given, on a teacher's soft targets as well; returns the model at its best held-out epoch and the history."""
    torch.manual_seed(args.seed)
    kwargs = dict(PRETRAINING_KWARGS[name])
    if args.no_masks:
        kwargs |= {"freqm": 0, "timem": 0}
    if args.patchout is not None and name == "passt_tiny":
        kwargs |= {"s_patchout_t": args.patchout[0], "s_patchout_f": args.patchout[1]}
    model = create_teacher(name, num_classes=len(SCENES), clip_seconds=1.0, **kwargs)
    if args.init:
        state = read_checkpoint(args.init)
        model.load_state_dict(state.get("model", state))  # a stage's best.pt or a release
    out = args.workdir / (f"{name}-{args.stage}" if args.stage else name)
    train = torch.utils.data.DataLoader(CorpusClips(audio, labels, train_rows, logits), batch_size=args.batch_size,
                                        shuffle=True, drop_last=True)
    heldout = torch.utils.data.DataLoader(CorpusClips(audio, labels, heldout_rows), batch_size=128)
    optim = OptimConfig(epochs=args.epochs or EPOCHS[name], lr=args.lr, warmup_epochs=args.warmup_epochs,
                        rampdown_start=args.rampdown_start)
    trainer = Trainer(model, optim, steps_per_epoch=len(train), out_dir=out,
                      primary_metric="accuracy", meta={"kind": "pretraining", "name": name}, seed=args.seed,
                      device=device, train_module=AugmentedForward(model, ASC, mixstyle_p=args.mixstyle_p))
    trainer.resume()
    loss = DistillLoss(ASC, kd_lambda=1.0 if logits is None else args.kd_lambda, temperature=args.temperature)

    def step(module: torch.nn.Module, batch: dict) -> LossTerms:
        wave, hard = batch["audio"].to(device), batch["target"].to(device)
        soft = loss.targets(batch["logits"].to(device)) if logits is not None else None
        if args.gain_db > 0:
            wave = random_gain(wave, args.gain_db)
        params = mixup_params(len(wave), args.mixup, device) if args.mixup > 0 else None
        if params is not None:
            hard, soft = mix(hard, params), mix(soft, params) if soft is not None else None
        return loss(module(wave, params), hard, soft)

    def report(epoch: int, record: dict[str, float]) -> None:
        print(f"{name} epoch {epoch}: train loss {record['train_loss']:.3f}, held-out accuracy "
              f"{record['accuracy']:.3f}", flush=True)

    history = trainer.fit(train, step, lambda m: accuracy(m, heldout, device), on_epoch_end=report)
    best = read_checkpoint(out / "best.pt")
    model.load_state_dict(best["model"])
    return model.cpu().eval(), history


def write_release(model: torch.nn.Module, name: str, out: Path) -> Path:
    """The model's state dict in float16, checked to load strictly into a fresh ``name`` before it is kept."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_demo.pt"
    torch.save({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    create_teacher(name, checkpoint=path)  # the path every user takes: strict keys and shapes
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24000, help="corpus size, held-out part included")
    parser.add_argument("--locations", type=int, default=240, help="recording locations per scene")
    parser.add_argument("--devices", type=int, default=96, help="simulated recording devices")
    parser.add_argument("--heldout", type=float, default=0.05, help="fraction of clips, locations and devices held out")
    parser.add_argument("--corpus-seed", type=int, default=2024)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"passes over the corpus (default: the releases', {EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=0.2)
    parser.add_argument("--rampdown-start", type=float, default=0.5,
                        help="fraction of the steps after which the learning rate ramps down linearly (0: at once, "
                             "to continue a stage's ramp-down from its release)")
    parser.add_argument("--mixup", type=float, default=0.0, help="fresh clips need no mixup")
    parser.add_argument("--mixstyle-p", type=float, default=0.0,
                        help="Freq-MixStyle probability (the corpus already varies the devices)")
    parser.add_argument("--gain-db", type=float, default=6.0)
    parser.add_argument("--no-masks", action="store_true",
                        help="no SpecAugment masks (for a model that underfits the corpus rather than memorising it)")
    parser.add_argument("--patchout", type=int, nargs=2, default=None, metavar=("T", "F"),
                        help=f"PaSST's structured patchout in time and frequency (default "
                             f"{PRETRAINING_KWARGS['passt_tiny']['s_patchout_t']} and "
                             f"{PRETRAINING_KWARGS['passt_tiny']['s_patchout_f']})")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--init", type=Path, default=None,
                        help="weights to start from (a previous stage's best.pt, or a release)")
    parser.add_argument("--stage", default="", help="name of this stage (its checkpoints go to WORKDIR/NAME-STAGE)")
    parser.add_argument("--soft-targets", default=None, choices=list(RATES),
                        help="also learn the soft targets of this teacher's shipped release (DeiT's CNN teacher)")
    parser.add_argument("--kd-lambda", type=float, default=0.5, help="weight of the label loss with --soft-targets")
    parser.add_argument("--temperature", type=float, default=2.0, help="temperature of --soft-targets")
    parser.add_argument("--teachers", nargs="+", default=list(RATES), choices=list(RATES))
    parser.add_argument("--workers", type=int, default=2, help="processes generating the corpus")
    parser.add_argument("--generate-only", action="store_true",
                        help="write the corpus cache and stop (then train the teachers in parallel processes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; on a busy machine, 1 per process wastes less)")
    parser.add_argument("--workdir", type=Path, default=Path("demo-teacher-pretraining"),
                        help="corpus cache and per-epoch checkpoints (a rerun resumes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "teachers" / "releases")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = Corpus(args.corpus_seed, args.clips, args.locations, args.devices, args.heldout)
    plan = corpus.plan()
    labels = np.array([row[0] for row in plan])
    held_out = np.array([row[3] for row in plan])
    start = time.perf_counter()
    audio = generate(corpus, args.workdir, args.workers)
    timings = {"generate_s": round(time.perf_counter() - start, 1)}
    if args.generate_only:
        print(json.dumps({"corpus_cache": str(args.workdir), "wall_s": timings}))
        return
    result = {"corpus": {"seed": corpus.seed, "clips": corpus.clips, "train_clips": int((~held_out).sum()),
                         "heldout_clips": int(held_out.sum()), "locations": corpus.locations * len(SCENES),
                         "devices": corpus.devices},
              "teachers": {}}
    for name in args.teachers:
        t0 = time.perf_counter()
        logits = None
        if args.soft_targets:
            logits = release_logits(args.soft_targets, audio[RATES[args.soft_targets]], args.workdir, device)
        model, history = pretrain(name, audio[RATES[name]], labels, np.flatnonzero(~held_out),
                                  np.flatnonzero(held_out), args, device, logits)
        path = write_release(model, name, args.out)
        timings[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        result["teachers"][name] = {"epochs": len(history), "file": path.name, "sha256": sha256_file(path),
                                    "bytes": path.stat().st_size,
                                    "heldout_accuracy": max(r["accuracy"] for r in history),
                                    "history": [round(r["accuracy"], 4) for r in history]}
        print(f"{name}: {path} sha256 {result['teachers'][name]['sha256']}", flush=True)
    result["wall_s"] = {**timings, "total_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
