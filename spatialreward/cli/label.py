"""`spatialreward label`: label a dataset with a teacher, resumably, locally or on Ray.

Options come from two config dataclasses, one flag per field (`cli._options`): `LabelConfig` (how the run goes:
shards, selection, strictness, Ray) and `TeacherConfig` (what the VLM teacher is told). Only the dataset, the
teacher spec and the report file are declared here. ``--batch-size`` is shared: samples per teacher call, and
requests per ``generate()`` for ``vlm:`` teachers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import build_config, config_options
from spatialreward.teacher.config import TeacherConfig
from spatialreward.teacher.pipeline import LabelConfig

LABEL_EXAMPLES = """

Examples (rerunning a command resumes it: samples already in labels/<teacher>/ are skipped):

spatialreward label --data data/synth   (oracle labels for a synthetic set)

spatialreward label --data data/mine --teacher vlm:SpatialReward/SpatialReward-8B

spatialreward label --data data/mine --teacher openai:http://localhost:8000/v1#SpatialReward/SpatialReward-8B

spatialreward label --data data/mine --teacher vlm:/models/sr8b --ray auto   (one teacher per GPU)
"""

# Options that only mean something to a VLM teacher; given with the oracle they are a mistake worth naming.
VLM_ONLY = ("prompt_file", "name")


@config_options(LabelConfig, TeacherConfig)
def label(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (samples.jsonl + images).")],
    teacher: Annotated[
        str, typer.Option(help="oracle, vlm:PATH_OR_HUB_ID, openai:URL or openai:URL#MODEL.")
    ] = "oracle",
    report: Annotated[Optional[Path], typer.Option(help="Also write the run's counts as JSON to this file.")] = None,
    **options,
) -> None:
    """Label every sample of a dataset with a teacher; shards go to DATA/labels/<teacher>/."""
    from rich.console import Console

    from spatialreward.teacher.config import TeacherLoadError
    from spatialreward.teacher.registry import make_teacher, parse_teacher_spec

    try:
        spec = parse_teacher_spec(teacher)
        given = [f"--{k.replace('_', '-')}" for k in VLM_ONLY if options.get(k) is not None]
        if spec.kind == "oracle" and given:
            raise CLIError(f"{' and '.join(given)} apply to vlm: and openai: teachers, not the oracle")
        run_config = build_config(LabelConfig, options)
        # An unset --batch-size leaves each teacher its own default (8 per generate() for vlm:).
        teacher_options = {k: v for k, v in options.items() if not (k == "batch_size" and v is None)}
        config = build_config(TeacherConfig, teacher_options)
    except (TeacherLoadError, ValueError) as exc:
        raise CLIError(str(exc)) from exc

    try:
        if run_config.ray is not None:
            from spatialreward.teacher.ray_pipeline import label_dataset_ray

            result = label_dataset_ray(data, spec, config, run_config)
        else:
            from spatialreward.teacher.pipeline import label_dataset

            result = label_dataset(data, make_teacher(spec, config), run_config)
    except TeacherLoadError as exc:
        raise CLIError(str(exc)) from exc

    console = Console()
    console.print(result.table())
    for line in result.problems():
        console.print(f"[yellow]{line}[/yellow]", highlight=False)
    if report is not None:
        report.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")


label.__doc__ = (label.__doc__ or "") + LABEL_EXAMPLES
