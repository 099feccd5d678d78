"""`spatialreward synth`: write the synthetic edit benchmark (real photos, exact ground truth) to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import comma_list

SYNTH_EXAMPLES = """
Examples:
  spatialreward synth --out data/synth --groups 200 --seed 0
  spatialreward synth --out data/big --groups 5000 --workers 8 --size 224
  spatialreward synth --out data/tiny --groups 40 --size 96 --candidates 8
  spatialreward synth --out data/gen --groups 300 --layout generalisation --seed 100   # for `eval --report`
  spatialreward synth --out data/old --groups 1000 --recipe classic                    # the synth-v1 generator
"""


def synth(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write (new or empty; a set made with the same "
                                      "settings is resumed, or extended when --groups is larger).")],
    groups: Annotated[int, typer.Option("--groups", help="Number of GRPO groups (source, instruction, edits).")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed gives byte-identical files.")] = 0,
    candidates: Annotated[int, typer.Option("--candidates", help="Edits per group (8 = one of each kind).")] = 8,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 224,
    heldout_fraction: Annotated[float, typer.Option(
        "--heldout-fraction", help="Share of groups, and of source photos, kept for the held-out split.")] = 0.2,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Processes building groups (default: all cores; 1 = in this process).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    recipe: Annotated[str, typer.Option(
        "--recipe", help="diverse (failure families, rendered scenes, phrasing families) or classic (synth-v1).")
    ] = "diverse",
    layout: Annotated[str, typer.Option(
        "--layout", help="train (train + heldout splits) or generalisation (evaluation-only splits, each holding "
        "out one factor: photos, scene style, phrasing, failure families, matplotlib's images).")] = "train",
    procedural_fraction: Annotated[float, typer.Option(
        "--procedural-fraction", help="Share of training sources that are rendered scenes (diverse recipe).")] = 0.35,
    heldout_families: Annotated[str | None, typer.Option(
        "--heldout-families", help="Comma-separated failure families kept out of training (default "
        "checkerboard,frame_shift; '' for none).")] = None,
    heldout_phrasing: Annotated[str, typer.Option(
        "--heldout-phrasing", help="Instruction phrasing family kept out of training.")] = "terse",
    heldout_scene_styles: Annotated[str, typer.Option(
        "--heldout-scene-styles", help="Comma-separated scene styles kept out of training.")] = "landscape",
) -> None:
    """Build GRPO groups of edits on real photos with exact ground truth (boxes, sub-scores), for the oracle teacher."""
    from rich.console import Console
    from rich.table import Table

    from spatialreward.synth import SynthConfig, generate_dataset
    from spatialreward.synth.failures import DEFAULT_HELDOUT_FAMILIES

    families = DEFAULT_HELDOUT_FAMILIES if heldout_families is None else comma_list(heldout_families)
    options = dict(recipe=recipe, layout=layout, procedural_fraction=procedural_fraction, heldout_families=families,
                   heldout_phrasing=heldout_phrasing, heldout_scene_styles=comma_list(heldout_scene_styles))
    try:
        SynthConfig(groups=groups, seed=seed, candidates=candidates, size=size, heldout_fraction=heldout_fraction,
                    **options)
    except ValueError as exc:
        message = str(exc)
        for field in ("groups", "candidates", "size", "heldout_fraction", "recipe", "layout", "procedural_fraction",
                      "heldout_families", "heldout_phrasing", "heldout_scene_styles"):
            message = message.replace(f"{field}=", f"--{field.replace('_', '-')} ")
        raise CLIError(message) from exc
    if workers is not None and workers < 1:
        raise CLIError(f"--workers {workers}: use 1 or more (1 builds in this process)")

    report = generate_dataset(out, groups, seed, candidates=candidates, size=size, heldout_fraction=heldout_fraction,
                              workers=workers, progress=progress, **options)

    console = Console()
    resumed = f", {report.resumed_groups} resumed" if report.resumed_groups else ""
    console.print(f"[bold]{report.out}[/bold]: {report.groups} groups, {report.samples} samples in "
                  f"{report.seconds:.1f} s ({report.workers} workers, {report.cpu_seconds:.0f} CPU-s{resumed}), "
                  f"{report.bytes_on_disk / 2**20:.1f} MiB on disk")
    table = Table(title="candidates per kind")
    table.add_column("kind")
    table.add_column("samples", justify="right")
    for kind, n in report.kinds.items():
        table.add_row(kind, str(n))
    console.print(table)
    splits = ", ".join(f"{k}: {report.groups_per_split.get(k, 0)} groups / {n} samples"
                       for k, n in report.splits.items())
    console.print(f"splits — {splits}")
    console.print("operations — " + ", ".join(f"{k}: {n}" for k, n in report.operations.items()))
    console.print(f"held-out photos — {', '.join(report.photos['heldout']) or 'none'}")
    if recipe == "diverse":
        families = ", ".join(options["heldout_families"]) or "none"
        console.print(f"recipe diverse — never in training: failure families {families}; phrasing "
                      f"{heldout_phrasing}; scene styles {', '.join(options['heldout_scene_styles'])}"
                      + ("; evaluation-only images " + ", ".join(report.photos.get("eval_pool", []))
                         if layout == "generalisation" else ""))
    console.print(f"next: spatialreward label --teacher oracle --data {report.out}")


synth.__doc__ = (synth.__doc__ or "") + "\n" + SYNTH_EXAMPLES
