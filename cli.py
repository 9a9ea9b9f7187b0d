"""The ``kd`` command line: a thin click layer over library functions.

Each command parses its options, calls one function of the library and renders the result with rich.
Heavy imports (torch, zarr, dask, mlflow) happen inside the commands, so ``kd --help`` is instant. A
user's mistake (a bad path, a store built for other classes, a checkpoint that does not fit) ends in one
red line and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()


class KdGroup(click.Group):
    """A group whose commands turn user errors into one line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            from kd.errors import is_user_error

            if not is_user_error(exc):
                raise
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=KdGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="kd-audio", prog_name="kd")
def main() -> None:
    """Knowledge distillation for audio.

    Teach once, distil many times: `kd teach` runs teacher transformers (PaSST, AST, ensembles) over a
    dataset and stores their logits; `kd distill` trains small students (MobileNetV3, DyMN, CP-Mobile,
    frame-wise SED models) from any ensemble of stored teachers. MLflow records every run.
    """


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--task", type=click.Choice(["asc", "tagging", "sed"]), default="asc", show_default=True,
              help="asc: TAU22 layout, scenes through simulated devices; tagging: AudioSet HDF5 layout; "
                   "sed: AudioSet-Strong layout with onsets/offsets.")
@click.option("--clips", type=int, default=None, help="Clips over all splits (default: asc 600, tagging 400, sed 300).")
@click.option("--seconds", type=float, default=None, help="Clip length (default: asc 1 s, tagging 3 s, sed 4 s).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
def demo_data(out, task, clips, seconds, seed, overwrite) -> None:
    """Write a small synthetic dataset in a real dataset's exact layout, for trying kd out."""
    from kd.data import make_demo_data

    info = make_demo_data(out, task, clips=clips, seed=seed, seconds=seconds, overwrite=overwrite)
    splits = ", ".join(f"{n} {s}" for s, n in info["splits"].items())
    out_console = f"wrote {info['clips']} clips ({splits}) of {len(info['classes'])} classes to {info['path']}"
    console.print(out_console, highlight=False)
    console.print(f"use it as  --dataset {info['spec']}", highlight=False)


@main.command("teachers")
@click.argument("pattern", required=False)
def list_teachers_cmd(pattern) -> None:
    """List the registered teachers (optionally matching a shell PATTERN such as 'passt_s_*')."""
    from teachers import create_teacher, list_teachers, teacher_cfg

    table = Table("teacher", "params", "sample rate", "context", "frames/s", "AudioSet mAP")
    table.columns[0].no_wrap = True
    for name in list_teachers(pattern):
        cfg = teacher_cfg(name)
        with _meta_device():
            model = create_teacher(name)
        params = sum(p.numel() for p in model.parameters())
        fps = f"{model.frames_per_second:g}" if model.frames_per_second else "-"
        mean_ap = f"{cfg['audioset_map']:.3f}" if cfg.get("audioset_map") else "-"
        table.add_row(name, f"{params / 1e6:.2f} M", f"{model.sample_rate}", f"{model.clip_seconds:g} s", fps, mean_ap)
    out.print(table)


def _meta_device():
    import torch

    return torch.device("meta")


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
