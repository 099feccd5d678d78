"""`spatialreward export onnx | check | tensorrt`: the trained student leaves PyTorch.

Examples:
  spatialreward export onnx --model runs/nano --out exports/nano            # encode.onnx, score.onnx, export.json
  spatialreward export check exports/nano                                   # what TensorRT 10's parser would refuse
  spatialreward export tensorrt --onnx exports/nano --out engines/nano --precision fp16 --batch 1,64,256 \\
      --timing-cache engines/timing.cache                                   # needs TensorRT and a GPU
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError
from spatialreward.cli._options import build_config, config_options
from spatialreward.export.onnx_export import ExportConfig

export_app = typer.Typer(help="ONNX export, the TensorRT-compatibility check and TensorRT engines.",
                         no_args_is_help=True)


@export_app.command("onnx")
@config_options(ExportConfig)
def onnx(**options) -> None:
    """Write encode.onnx + score.onnx + export.json (temp folder, then renamed) from a student folder."""
    from spatialreward.export.onnx_export import ExportError, export_onnx
    from spatialreward.export.trt_check import check_export

    try:
        cfg = build_config(ExportConfig, options)
        if not cfg.model:
            raise CLIError("--model is required (the OUT folder of `spatialreward distill`)")
        if not cfg.out:
            raise CLIError("--out is required (the export folder to write)")
        out = export_onnx(cfg)
    except (ExportError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    findings = check_export(out)
    print(f"TensorRT-10 compatibility: {len(findings)} finding(s)" + ("" if not findings else
                                                                       f"; see `spatialreward export check {out}`"))


@export_app.command("check")
def check(directory: Annotated[Path, typer.Argument(help="Export folder (or any folder of .onnx graphs).")]) -> None:
    """List every node TensorRT 10's ONNX parser would refuse or change; exit status 1 when there are findings."""
    from spatialreward.export.trt_check import check_export

    try:
        findings = check_export(directory)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    for finding in findings:
        print(finding)
    print(f"{directory}: {len(findings)} finding(s) against the TensorRT-10 ONNX parser table")
    if findings:
        raise typer.Exit(1)


@export_app.command("tensorrt")
def tensorrt(
    onnx_dir: Annotated[Path, typer.Option("--onnx", help="Export folder written by `spatialreward export onnx`.")],
    out: Annotated[Path, typer.Option(help="Engine folder to write.")],
    precision: Annotated[str, typer.Option(help="fp16, bf16 or fp32 (TensorRT 11: must match the export).")] = "fp16",
    batch: Annotated[str, typer.Option(help="Optimisation profile MIN,OPT,MAX over the batch axis.")] = "1,64,256",
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file, read if present and updated.")] = None,
    workspace_gib: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 4.0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing engine folder.")] = False,
) -> None:
    """Build encode.engine + score.engine with the TensorRT Python API (10.x or 11.x) on this machine's GPU."""
    from spatialreward.export.onnx_export import ExportError
    from spatialreward.export.tensorrt import build_engines, parse_batch_profile

    try:
        build_engines(onnx_dir, out, precision=precision, batch=parse_batch_profile(batch), timing_cache=timing_cache,
                      workspace_gib=workspace_gib, overwrite=overwrite)
    except (ImportError, ExportError, ValueError, FileExistsError) as exc:
        raise CLIError(str(exc)) from exc
