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


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
