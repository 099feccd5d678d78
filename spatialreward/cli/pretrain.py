"""`spatialreward pretrain`: self-supervised change pretraining of a student, no teacher and no dataset needed.

Options come from `PretrainConfig` (the run) and `StudentConfig` (the network, changing the chosen ``--preset``);
the student needs a learned quality map (``--quality-scale 2 --quality-dim 32`` for `nano`). Its output folder is what
``spatialreward distill --init-from`` starts from, with the same student flags.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import build_config, config_options, field_help, given_values
from spatialreward.student.model import StudentConfig
from spatialreward.student.pretrain import PretrainConfig

PRETRAIN_EXAMPLES = """
Examples:
  spatialreward pretrain --preset nano --quality-scale 2 --quality-dim 32 --out runs/pre --max-minutes 10
  spatialreward distill --preset nano --quality-scale 2 --quality-dim 32 --init-from runs/pre --data data/synth --out runs/nano
"""


@config_options(PretrainConfig, StudentConfig, overrides={StudentConfig: "the preset's"})
def pretrain(out: Annotated[Path, typer.Option(help=field_help(PretrainConfig, "out"))], **options) -> None:
    """Pretrain a student's change and quality detectors on procedural pairs; writes OUT/model.safetensors."""
    from rich import print as rprint

    from spatialreward.student.presets import list_presets, preset_config
    from spatialreward.student.pretrain import Pretrainer

    preset = options["preset"]
    if preset not in list_presets():
        raise CLIError(f"--preset {preset!r} is unknown; choose one of {', '.join(list_presets())}")
    try:
        cfg = build_config(PretrainConfig, options, out=str(out))
        student_config = replace(preset_config(preset), **given_values(StudentConfig, options))
        trainer = Pretrainer(cfg, student_config)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    out_dir = trainer.train()
    rprint(f"wrote [bold]{out_dir}[/bold] (model.safetensors, config.json, pretrain.json); start a run from it "
           f"with `spatialreward distill --init-from {out_dir}` and the same student flags")


pretrain.__doc__ = (pretrain.__doc__ or "") + "\n" + PRETRAIN_EXAMPLES
