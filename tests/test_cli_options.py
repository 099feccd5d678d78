"""`spatialreward.cli._options`: config dataclass fields become typer options, each knob defined once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest
import typer
from typer.testing import CliRunner

from spatialreward.cli._options import build_config, config_options, missing_flags


@dataclass
class ToyConfig:
    data: Path = field(metadata={"help": "dataset folder"})
    steps: int = field(default=10, metadata={"help": "training steps"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    loss: Literal["nll", "huber"] = field(default="nll", metadata={"help": "sub-score loss"})
    limit: int | None = field(default=None, metadata={"help": "stop after N"})
    amp: bool = field(default=True, metadata={"help": "mixed precision"})
    name: str = field(default="run", metadata={"help": "run name"})


@dataclass
class OtherConfig:
    width: int = field(default=128, metadata={"help": "embedding width"})
    steps: int = field(default=99, metadata={"help": "shadowed by ToyConfig.steps"})


def _app(seen: dict) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @config_options(ToyConfig, OtherConfig)
    def run(out: Annotated[Path, typer.Option(help="output folder")], **options) -> None:
        seen["toy"] = build_config(ToyConfig, options)
        seen["other"] = build_config(OtherConfig, options)
        seen["out"] = out

    return app


def test_defaults_types_and_overrides(tmp_path):
    seen: dict = {}
    app = _app(seen)
    result = CliRunner().invoke(app, ["--out", str(tmp_path), "--data", "d", "--steps", "5", "--loss", "huber",
                                      "--limit", "3", "--no-amp", "--width", "64"])
    assert result.exit_code == 0, result.output
    toy, other = seen["toy"], seen["other"]
    assert toy == ToyConfig(data=Path("d"), steps=5, lr=1e-3, loss="huber", limit=3, amp=False, name="run")
    assert other == OtherConfig(width=64, steps=5)  # one --steps flag serves both configs
    assert seen["out"] == tmp_path


def test_required_field_and_bad_choice_are_refused(tmp_path):
    app = _app({})
    missing = CliRunner().invoke(app, ["--out", str(tmp_path)])
    assert missing.exit_code != 0 and "--data" in missing.output
    bad = CliRunner().invoke(app, ["--out", str(tmp_path), "--data", "d", "--loss", "mse"])
    assert bad.exit_code != 0 and "mse" in bad.output


def test_help_comes_from_field_metadata():
    result = CliRunner().invoke(_app({}), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("Training steps.", "Learning rate.", "--no-amp", "Embedding width."):
        assert text in result.output


def test_every_field_has_a_flag():
    @config_options(ToyConfig)
    def cmd(**options):
        return options

    assert missing_flags(cmd, ToyConfig) == []
    assert missing_flags(cmd, OtherConfig) == ["width"]


def test_field_without_help_or_with_an_unsupported_type_fails_at_definition():
    @dataclass
    class NoHelp:
        x: int = 1

    @dataclass
    class Odd:
        x: dict = field(default_factory=dict, metadata={"help": "a mapping"})

    with pytest.raises(TypeError, match="NoHelp.x has no metadata"):
        config_options(NoHelp)(lambda **o: o)
    with pytest.raises(TypeError, match="Odd.x: type"):
        config_options(Odd)(lambda **o: o)
    assert config_options(Odd, skip={"x"})(lambda **o: o)() == {}
