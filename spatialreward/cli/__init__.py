"""The `spatialreward` command: the whole command tree on one screen.

Each command is a plain typed function in its own module of this package (``synth.py``, ``label.py``, …); this file
only assembles them. Heavy imports (torch, transformers) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from spatialreward.cli._errors import CLIError

app = typer.Typer(
    name="spatialreward",
    help="Cheap, spatially grounded rewards for image-editing RL: synthesise, label, distill, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# name -> (module, function). Order is the order of `--help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("spatialreward.cli.synth", "synth"),
    "label": ("spatialreward.cli.label", "label"),
    "inspect": ("spatialreward.cli.inspect", "inspect"),
    "pretrain": ("spatialreward.cli.pretrain", "pretrain"),
    "distill": ("spatialreward.cli.distill", "distill"),
    "eval": ("spatialreward.cli.evaluate", "evaluate"),
    "novelty": ("spatialreward.cli.novelty", "novelty"),
    "convert": ("spatialreward.cli.convert", "convert"),
    "serve": ("spatialreward.cli.serve", "serve"),
    "export": ("spatialreward.cli.export", "export_app"),
}


@app.callback()
def _root() -> None:
    """Cheap, spatially grounded rewards for image-editing RL: synthesise, label, distill, evaluate, serve."""


def _register() -> None:
    for name, (module, func) in COMMANDS.items():
        command = getattr(importlib.import_module(module), func)
        if isinstance(command, typer.Typer):  # a command group (`spatialreward export onnx | check | tensorrt`)
            app.add_typer(command, name=name)
        else:
            app.command(name)(command)


_register()


def main() -> None:
    """Entry point: known errors print one readable line; SPATIALREWARD_DEBUG=1 shows the traceback."""
    from spatialreward.dataset import DatasetError
    from spatialreward.images import ImageLoadError

    try:
        app()
    except (CLIError, DatasetError, ImageLoadError, FileNotFoundError) as exc:
        if os.environ.get("SPATIALREWARD_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("(set SPATIALREWARD_DEBUG=1 to see the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
