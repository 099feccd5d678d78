"""`spatialreward novelty`: fit the novelty check of a trained student, so its rewards say when they are a guess.

Examples:
  spatialreward novelty --model runs/nano --data data/demo      # train split fits, heldout calibrates
  spatialreward novelty --model runs/nano --data data/demo --fit-groups 1600 --quantile 0.995
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import comma_list


def novelty(
    model: Annotated[Path, typer.Option(help="Student folder (the OUT of `spatialreward distill`).")],
    data: Annotated[Path, typer.Option(help="The dataset the student was trained on (labels of --teacher).")],
    teacher: Annotated[str, typer.Option(help="Whose labelled samples to read.")] = "oracle",
    fit_split: Annotated[str, typer.Option(help="Split whose edits define 'like training'.")] = "train",
    calibration_split: Annotated[str, typer.Option(
        help="Split of in-distribution edits the fit does not see; its --quantile becomes novelty 1.")] = "heldout",
    fit_groups: Annotated[int, typer.Option(help="Groups of --fit-split to fit on (first N).")] = 800,
    calibration_groups: Annotated[int, typer.Option(help="Groups of --calibration-split (first N).")] = 200,
    quantile: Annotated[float, typer.Option(help="Share of calibration edits at or below novelty 1.")] = 0.99,
    views: Annotated[str | None, typer.Option(
        help="Comma-separated subset of instruction, evidence, pixels to model (default: every view the student "
        "has; README issue 16 measures each).")] = None,
) -> None:
    """Fit a Gaussian to the student's instruction and evidence features over training edits and write
    MODEL/novelty.safetensors: then every backend's RewardOutput carries `novelty` (> 1: unlike training)."""
    from spatialreward.student.novelty import fit_student_folder

    if not (model / "config.json").is_file():
        raise CLIError(f"--model {model}: no config.json (train one with `spatialreward distill --out {model}`)")
    if not (data / "samples.jsonl").is_file():
        raise CLIError(f"--data {data}: no samples.jsonl")
    try:
        fit_student_folder(model, data, teacher=teacher, fit_split=fit_split, calibration_split=calibration_split,
                           fit_groups=fit_groups, calibration_groups=calibration_groups, quantile=quantile,
                           views=None if views is None else comma_list(views))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print("exports made before this fit have no novelty output: re-run `spatialreward export onnx`")


novelty.__doc__ = (novelty.__doc__ or "") + "\n\n\b\n" + __doc__.split("\n\n", 1)[1]
