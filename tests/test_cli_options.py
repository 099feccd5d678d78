"""`spatialreward.cli._options`: config dataclass fields become typer options, each knob defined once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Literal

import pytest
import typer
from typer.testing import CliRunner

from spatialreward.cli._options import build_config, config_options, given_values, missing_flags


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
        x: list = field(default_factory=list, metadata={"help": "a sequence"})

    with pytest.raises(TypeError, match="NoHelp.x has no metadata"):
        config_options(NoHelp)(lambda **o: o)
    with pytest.raises(TypeError, match="Odd.x: type"):
        config_options(Odd)(lambda **o: o)
    assert config_options(Odd, skip={"x"})(lambda **o: o)() == {}


def test_override_config_flags_default_to_none_and_only_given_values_return():
    @dataclass
    class Base:
        width: int = field(default=128, metadata={"help": "embedding width"})
        stats: bool = field(default=True, metadata={"help": "pixel statistics"})
        weights: dict = field(default_factory=lambda: {"a": 1.0}, metadata={"help": "formula weights"})

    seen: dict = {}
    app = typer.Typer()

    @app.command()
    @config_options(ToyConfig, Base, overrides={Base: "the preset's"})
    def run(**options) -> None:
        seen["given"] = given_values(Base, options)

    runner = CliRunner()
    assert runner.invoke(app, ["--data", "d"]).exit_code == 0 and seen["given"] == {}
    result = runner.invoke(app, ["--data", "d", "--width", "64", "--no-stats", "--weights", '{"a": 2}'])
    assert result.exit_code == 0, result.output
    assert seen["given"] == {"width": 64, "stats": False, "weights": {"a": 2}}
    for bad in ("[1, 2]", "{oops"):
        result = runner.invoke(app, ["--data", "d", "--weights", bad])
        assert result.exit_code != 0 and "--weights" in result.output and "object" in result.output
    helped = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "Unset: the preset's." in helped.output and "JSON" in helped.output
    with pytest.raises(TypeError, match="not among the configs"):
        config_options(ToyConfig, overrides={Base: "x"})(lambda **o: o)


def test_help_text_is_not_read_as_rich_markup():
    @dataclass
    class Bracketed:
        depth: int = field(default=1, metadata={"help": "blocks over [instruction; change tokens]"})

    app = typer.Typer()
    app.command()(config_options(Bracketed)(lambda **o: None))
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "[instruction; change tokens]" in result.output


# -- `spatialreward distill`: its flags are DistillConfig's and StudentConfig's fields -----------------------------


def test_every_distill_and_student_config_field_has_a_distill_flag():
    from spatialreward.cli.distill import distill
    from spatialreward.student.distill import DistillConfig
    from spatialreward.student.model import StudentConfig

    assert missing_flags(distill, DistillConfig) == []
    assert missing_flags(distill, StudentConfig) == []


@pytest.fixture
def captured_distiller(monkeypatch, tmp_path):
    """`spatialreward distill` up to the `Distiller` it builds: the configs it would train with, no training."""
    import spatialreward.student.distill as distill_module

    seen: dict = {}

    class Captured:
        is_main = True

        def __init__(self, cfg, *, student_config=None, **kwargs):
            seen["cfg"], seen["student"] = cfg, student_config
            # what the Distiller trains: the given config, or the checkpoint's when a run resumes
            self.model = SimpleNamespace(cfg=seen.get("checkpoint_student", student_config))

        def train(self):
            return Path(seen["cfg"].out)

    monkeypatch.setattr(distill_module, "Distiller", Captured)
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples.jsonl").write_text("")

    def invoke(*args: str):
        from spatialreward.cli import app

        for key in ("cfg", "student"):
            seen.pop(key, None)
        result = CliRunner().invoke(app, ["distill", "--data", str(data), "--out", str(tmp_path / "run"), *args])
        return result, seen

    return invoke


def test_distill_defaults_are_the_configs_own(captured_distiller, tmp_path):
    from spatialreward.student.distill import DistillConfig
    from spatialreward.student.presets import preset_config

    result, seen = captured_distiller("--max-steps", "30")
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == DistillConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), max_steps=30)
    assert seen["student"] == preset_config("nano")


def test_distill_flags_reach_both_configs(captured_distiller):
    from spatialreward.student.presets import preset_config

    result, seen = captured_distiller(
        "--max-steps", "3", "--preset", "tiny", "--w-subscore", "0.5", "--ranking-temperature", "0.1",
        "--min-lr-ratio", "0.1", "--ranking-gap-weighted", "--img-size", "64", "--region-floor", "0.2",
        "--no-pixel-stats", "--reward-weights", '{"w_if": 0.7, "w_cons": 0.3}', "--resume", "--overwrite",
    )
    assert result.exit_code == 0, result.output
    cfg, student = seen["cfg"], seen["student"]
    assert (cfg.preset, cfg.w_subscore, cfg.ranking_temperature, cfg.min_lr_ratio) == ("tiny", 0.5, 0.1, 0.1)
    assert cfg.ranking_gap_weighted and cfg.resume and cfg.overwrite and cfg.img_size == 64
    expected_weights = {**preset_config("tiny").reward_weights, "w_if": 0.7, "w_cons": 0.3}
    assert student == preset_config("tiny", img_size=64, region_floor=0.2, pixel_stats=False,
                                    reward_weights=expected_weights)


def test_distill_refuses_bad_student_values_naming_them(captured_distiller):
    result, _ = captured_distiller("--max-steps", "3", "--reward-weights", '{"w_typo": 1.0}')
    assert result.exit_code != 0 and "w_typo" in str(result.exception)
    result, _ = captured_distiller("--max-steps", "3", "--reward-weights", '{"w_if": 0.9}')  # w_cons still 0.4
    assert result.exit_code != 0 and "w_if" in str(result.exception)
    result, _ = captured_distiller("--max-steps", "3", "--img-size", "50")
    assert result.exit_code != 0 and "img_size=50" in str(result.exception)
    result, _ = captured_distiller()  # no budget: DistillConfig says how to set one
    assert result.exit_code != 0 and "max_minutes" in str(result.exception)


def test_distill_says_when_a_resumed_run_keeps_another_student(captured_distiller):
    from spatialreward.student.presets import preset_config

    result, seen = captured_distiller("--max-steps", "3")
    assert result.exit_code == 0 and "resuming" not in result.output
    seen["checkpoint_student"] = preset_config("nano", embed_dim=64)
    result, _ = captured_distiller("--max-steps", "3", "--resume", "--embed-dim", "96")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "resuming the student" in said and "--preset nano" in said and "in embed_dim;" in said
