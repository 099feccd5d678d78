"""`spatialreward inspect`: render a PNG contact sheet of one GRPO group with its labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError

INSPECT_EXAMPLES = """
Examples:
  spatialreward inspect --data data/synth --index 0 --out docs/contact_sheet.png
  spatialreward inspect --data data/synth --group heldout-0003 --teacher vlm:SpatialReward/SpatialReward-8B
"""


def inspect(
    data: Annotated[Path, typer.Option(help="Dataset folder (has samples.jsonl).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("contact_sheet.png"),
    group: Annotated[str | None, typer.Option(help="group_id to show; default: the --index-th group.")] = None,
    index: Annotated[int, typer.Option(help="Which group (0-based, in file order) when --group is not given.")] = 0,
    split: Annotated[str | None, typer.Option(help="Only consider groups of this split (train / heldout).")] = None,
    teacher: Annotated[str, typer.Option(help="Whose labels to show (a labels/<teacher> folder).")] = "oracle",
) -> None:
    """Render one group: source, each candidate with the teacher's boxes as a mask overlay, sub-scores and reward."""
    from rich import print as rprint

    from spatialreward.dataset import group_samples, labels_dir, read_labels, read_samples
    from spatialreward.viz import group_contact_sheet

    groups = group_samples(read_samples(data, split=split))
    if not groups:
        raise CLIError(f"{data}: no samples" + (f" in split {split!r}" if split else ""))
    if group is None:
        if not 0 <= index < len(groups):
            raise CLIError(f"--index {index} is out of range: {data} has {len(groups)} groups (0–{len(groups) - 1})")
        group = list(groups)[index]
    elif group not in groups:
        raise CLIError(f"group {group!r} is not in {data}; e.g. {', '.join(list(groups)[:3])}")
    labels = read_labels(data, teacher) if labels_dir(data, teacher).is_dir() else {}
    if not labels:
        rprint(f"[yellow]no labels from teacher {teacher!r} yet: showing images only "
               f"(run `spatialreward label --data {data} --teacher {teacher}`)[/yellow]")
    path = group_contact_sheet(data, groups[group], labels, out)
    rprint(f"wrote [bold]{path}[/bold] (group {group}, {len(groups[group])} candidates)")


inspect.__doc__ = (inspect.__doc__ or "") + "\n" + INSPECT_EXAMPLES
