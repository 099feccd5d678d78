"""`spatialreward distill`: train a student on a teacher's labels.

Options come from two config dataclasses, one flag per field (`cli._options`): `DistillConfig` (the run: data,
budget, optimiser, losses, output) and `StudentConfig` (the network). Student flags change the chosen ``--preset``;
an absent one keeps the preset's value. Only ``--data`` and ``--out`` are declared here (required).
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import build_config, config_options, field_help, given_values
from spatialreward.student.distill import DistillConfig
from spatialreward.student.model import StudentConfig

DISTILL_EXAMPLES = """
Examples:
  spatialreward distill --preset nano --data data/synth --out runs/nano --max-minutes 30
  spatialreward distill --preset nano --data data/synth --out runs/nano --max-minutes 60 --resume
  torchrun --nproc-per-node 2 -m spatialreward distill --preset tiny --data data/synth --out runs/tiny --max-steps 5000
"""


@config_options(DistillConfig, StudentConfig, overrides={StudentConfig: "the preset's"})
def distill(
    data: Annotated[Path, typer.Option(help=field_help(DistillConfig, "data"))],
    out: Annotated[Path, typer.Option(help=field_help(DistillConfig, "out"))],
    **options,
) -> None:
    """Distil a teacher's labels into a dual-stream ViT student; writes OUT/model.safetensors + config.json."""
    from rich import print as rprint

    from spatialreward.student.distill import Distiller
    from spatialreward.student.presets import list_presets, preset_config

    preset = options["preset"]
    if preset not in list_presets():
        raise CLIError(f"--preset {preset!r} is unknown; choose one of {', '.join(list_presets())}")
    if not (data / "samples.jsonl").is_file():
        raise CLIError(f"--data {data}: no samples.jsonl (make one with `spatialreward synth --out {data}`)")
    try:
        cfg = build_config(DistillConfig, options, data=str(data), out=str(out))
        student_config = _student_config(preset_config(preset), given_values(StudentConfig, options))
        distiller = Distiller(cfg, student_config=student_config)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    differ = [f.name for f in fields(StudentConfig)
              if getattr(distiller.model.cfg, f.name) != getattr(student_config, f.name)]
    if differ and distiller.is_main:  # a resumed run keeps the student in its checkpoint
        rprint(f"[yellow]{out}: resuming the student the run was started with, which differs from --preset {preset} "
               f"and the student flags in {', '.join(differ)}; those apply to a new run only[/yellow]")
    out_dir = distiller.train()
    if distiller.is_main:
        rprint(f"wrote [bold]{out_dir}[/bold] (model.safetensors, config.json, checkpoint/, metrics.jsonl); "
               f"evaluate with `spatialreward eval --model {out_dir} --data {data}`")


def _student_config(base: StudentConfig, given: dict) -> StudentConfig:
    """The preset's config with the student flags that were given (``--img-size`` included: DistillConfig and
    StudentConfig share it). ``--reward-weights`` may name only some weights; the rest keep the preset's."""
    if "reward_weights" in given:
        unknown = sorted(set(given["reward_weights"]) - set(base.reward_weights))
        if unknown:
            raise ValueError(f"--reward-weights: unknown weights {unknown}; the weights are "
                             f"{', '.join(base.reward_weights)}")
        given = {**given, "reward_weights": {**base.reward_weights, **given["reward_weights"]}}
    return replace(base, **given)


distill.__doc__ = (distill.__doc__ or "") + "\n" + DISTILL_EXAMPLES
