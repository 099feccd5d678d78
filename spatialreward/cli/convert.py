"""`spatialreward convert`: turn a public benchmark's records into a dataset folder of ours."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from spatialreward.cli._errors import CLIError


def convert(
    input: Annotated[Path, typer.Option("--input", help="The benchmark's JSONL file.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (samples.jsonl; images stay where they are).")],
    format: Annotated[
        Literal["editreward-bench", "mer-bench"], typer.Option(help="Record format of --input.")
    ] = "editreward-bench",
    image_root: Annotated[
        Path | None, typer.Option(help="Folder the records' image paths are relative to (default: --input's).")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad record instead of reporting and skipping.")] = False,
) -> None:
    """Read EditReward-Bench or MER-Bench-style records into EditSamples (ranked groups) and write samples.jsonl.

    Image paths are made absolute, so the new folder can live anywhere; `meta.rank` keeps the benchmark's order
    (0 = preferred / best), which `spatialreward eval` can compare against.
    """
    from rich import print as rprint

    from spatialreward.benchmarks import READERS
    from spatialreward.dataset import ReadReport, write_samples

    report = ReadReport()
    samples = READERS[format](input, image_root=image_root, strict=strict, report=report)
    if not samples:
        raise CLIError(f"{input}: no usable records ({report.bad} bad); see the errors above or use --strict")
    for err in report.errors[:20]:
        rprint(f"[yellow]skipped[/yellow] {err}")
    if report.bad > 20:
        rprint(f"[yellow]... and {report.bad - 20} more bad records[/yellow]")
    out.mkdir(parents=True, exist_ok=True)
    path = write_samples(out, [s.model_copy(update={"source": str(Path(s.source).resolve()),
                                                   "edited": str(Path(s.edited).resolve())}) for s in samples])
    rprint(f"wrote {len(samples)} samples from {report.records} records to [bold]{path}[/bold] ({report.bad} skipped)")
