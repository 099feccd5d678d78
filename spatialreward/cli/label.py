"""`spatialreward label`: label a dataset with a teacher, resumably, locally or on Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from spatialreward.cli._errors import CLIError

LABEL_EXAMPLES = """

Examples (rerunning a command resumes it: samples already in labels/<teacher>/ are skipped):

spatialreward label --data data/synth   (oracle labels for a synthetic set)

spatialreward label --data data/mine --teacher vlm:SpatialReward/SpatialReward-8B

spatialreward label --data data/mine --teacher openai:http://localhost:8000/v1#SpatialReward/SpatialReward-8B

spatialreward label --data data/mine --teacher vlm:/models/sr8b --ray auto   (one teacher per GPU)
"""


def label(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (samples.jsonl + images).")],
    teacher: Annotated[
        str, typer.Option(help="oracle, vlm:PATH_OR_HUB_ID, openai:URL or openai:URL#MODEL.")
    ] = "oracle",
    shard_size: Annotated[
        int, typer.Option(min=1, help="Judgements per shard file (at most this many lost to a crash).")
    ] = 256,
    limit: Annotated[Optional[int], typer.Option(min=0, help="Label only the first N samples in group order.")] = None,
    format: Annotated[str, typer.Option("--format", help="Shard format: jsonl or parquet.")] = "jsonl",
    split: Annotated[Optional[str], typer.Option(help="Only samples of this split.")] = None,
    prompt_file: Annotated[
        Optional[Path], typer.Option(help="JSON prompts {sc, pq, system?, version?} replacing the packaged sr-v1.")
    ] = None,
    ray: Annotated[
        Optional[str],
        typer.Option(help="Run on Ray: 'local' (private Ray here), 'auto' (this machine's cluster) or an address."),
    ] = None,
    ray_actors: Annotated[
        Optional[int], typer.Option(min=1, help="Teachers in the Ray actor pool (default: one per GPU).")
    ] = None,
    ray_cpus: Annotated[int, typer.Option(min=1, help="CPUs of a Ray started here (--ray local).")] = 2,
    batch_size: Annotated[
        Optional[int], typer.Option(min=1, help="Samples per teacher call (default: the teacher's).")
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="Re-asks, with sampling, of an answer that cannot be read.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="HTTP requests in flight (openai: teachers).")] = 16,
    timeout: Annotated[float, typer.Option(help="HTTP timeout per request, seconds (openai: teachers).")] = 120.0,
    http_retries: Annotated[int, typer.Option(min=0, help="HTTP retries after a timeout, 429/5xx or bad body.")] = 4,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Answer length cap per call (VLM teachers).")] = 512,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (vlm: teachers).")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | bfloat16 | float16 | float32 (vlm: teachers).")] = "auto",
    teacher_name: Annotated[
        Optional[str], typer.Option(help="Name in label records and of the label folder (default: from the model).")
    ] = None,
    redo_failed: Annotated[bool, typer.Option(help="Label again samples whose latest record is 'failed'.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with edits/s and parse failures.")] = True,
    report: Annotated[Optional[Path], typer.Option(help="Also write the run's counts as JSON to this file.")] = None,
) -> None:
    """Label every sample of a dataset with a teacher; shards go to DATA/labels/<teacher>/."""
    from rich.console import Console

    from spatialreward.teacher.registry import make_teacher, parse_teacher_spec
    from spatialreward.teacher.config import TeacherConfig, TeacherLoadError

    if format not in ("jsonl", "parquet"):
        raise CLIError(f"--format {format!r}: use jsonl or parquet")
    try:
        spec = parse_teacher_spec(teacher)
        if spec.kind == "oracle" and (prompt_file or teacher_name):
            raise CLIError("--prompt-file and --teacher-name apply to vlm: and openai: teachers, not the oracle")
        config = TeacherConfig(
            prompt_file=str(prompt_file) if prompt_file else None, name=teacher_name, max_new_tokens=max_new_tokens,
            parse_retries=retries, concurrency=concurrency, timeout_s=timeout, http_retries=http_retries,
            device=device, dtype=dtype, **({"batch_size": batch_size} if batch_size else {}),
        )
    except (TeacherLoadError, ValueError) as exc:
        raise CLIError(str(exc)) from exc

    options = dict(shard_size=shard_size, limit=limit, fmt=format, split=split, batch_size=batch_size,
                   redo_failed=redo_failed, progress=progress)
    try:
        if ray is not None:
            from spatialreward.teacher.ray_pipeline import label_dataset_ray

            result = label_dataset_ray(data, spec, config, address=ray, num_cpus=ray_cpus, num_actors=ray_actors,
                                       **options)
        else:
            from spatialreward.teacher.pipeline import label_dataset

            result = label_dataset(data, make_teacher(spec, config), **options)
    except TeacherLoadError as exc:
        raise CLIError(str(exc)) from exc

    Console().print(result.table())
    if report is not None:
        report.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")


label.__doc__ = (label.__doc__ or "") + LABEL_EXAMPLES
