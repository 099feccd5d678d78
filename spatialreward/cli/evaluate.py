"""`spatialreward eval`: score a student against a teacher's labels on one split; JSON, markdown table, PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import comma_list

EVAL_EXAMPLES = """
Examples:
  spatialreward eval --model runs/nano --data data/synth                 # held-out split, oracle labels
  spatialreward eval --model runs/nano --data data/synth --split train --out runs/nano/eval-train
  spatialreward synth --out data/gen --groups 240 --layout generalisation --seed 777
  spatialreward label --teacher oracle --data data/gen
  spatialreward eval --model runs/nano --data data/gen --report generalisation --out docs/results/gen_nano.json
"""


def evaluate(
    model: Annotated[Path, typer.Option(help="Student folder written by `spatialreward distill`.")],
    data: Annotated[Path, typer.Option(help="Dataset folder with labels of --teacher.")],
    split: Annotated[str, typer.Option(help="Split to evaluate ('all' = every sample).")] = "heldout",
    teacher: Annotated[str, typer.Option(help="Whose labels are the reference.")] = "oracle",
    out: Annotated[Path | None, typer.Option(help="Report folder (default MODEL/eval-<split>).")] = None,
    max_groups: Annotated[int | None, typer.Option(help="Only the first N groups (quick looks).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    json_only: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")] = False,
    report: Annotated[str, typer.Option(
        help="standard (one split) or generalisation (every split of a `synth --layout generalisation` set: per "
        "kind, hard pairs, per failure family; --out is then a .json path, default MODEL/generalisation.json, "
        "with a .png beside it).")] = "standard",
    unseen_operations: Annotated[str | None, typer.Option(
        help="Generalisation report of a student with a novelty fit: comma-separated operations it never trained on "
        "(default: the run's --exclude-operations).")] = None,
) -> None:
    """Within-group pairwise accuracy, Spearman/Kendall, group-advantage correlation, sub-score MAE, mask IoU (over
    all edits and over the edits the teacher boxed), presence accuracy of a student vs the teacher."""
    import json

    from rich import print as rprint

    from spatialreward.student.evaluate import evaluate_model_dir, metrics_markdown

    if not (model / "config.json").is_file():
        raise CLIError(f"--model {model}: no config.json (train one with `spatialreward distill --out {model}`)")
    if not (data / "samples.jsonl").is_file():
        raise CLIError(f"--data {data}: no samples.jsonl")
    if report not in ("standard", "generalisation"):
        raise CLIError(f"--report {report!r}: use standard or generalisation")
    if report == "generalisation":
        from spatialreward.student.generalisation import generalisation_report, report_markdown

        target = out if out is not None else model / "generalisation.json"
        if target.suffix != ".json":
            target = target / "generalisation.json"
        try:
            unseen = None if unseen_operations is None else comma_list(unseen_operations)
            result = generalisation_report(model, data, target, teacher=teacher, device=device,
                                           max_groups=max_groups, progress=not json_only, unseen_operations=unseen)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        if json_only:
            print(json.dumps(result["summary"], indent=2))
            return
        print(report_markdown(result))
        rprint(f"wrote {target}, {target.with_suffix('.png')}")
        return
    try:
        metrics, paths = evaluate_model_dir(
            model, data, split=None if split == "all" else split, teacher=teacher, out_dir=out,
            max_groups=max_groups, device=device, progress=not json_only,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if json_only:
        print(json.dumps(metrics, indent=2))
        return
    print(metrics_markdown(metrics, f"{model} on {data} ({split})"))
    rprint(f"wrote {paths['json']}, {paths['markdown']}, {paths['png']}")


evaluate.__doc__ = (evaluate.__doc__ or "") + "\n" + EVAL_EXAMPLES
