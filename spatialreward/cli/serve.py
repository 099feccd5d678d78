"""`spatialreward serve`: the reward server (dynamic batching, JSON API, SpatialReward-protocol endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError

SERVE_EXAMPLES = """
Examples:
  spatialreward serve --model runs/nano                                  # http://127.0.0.1:23456, loopback only
  spatialreward serve --model runs/nano --host 0.0.0.0 --token-file ~/.sr_token   # clients send a bearer token
  spatialreward serve --model runs/nano --ray --replicas 2 --num-gpus 0.5 --device cuda   # Ray Serve
  spatialreward serve --model runs/nano --ray --ray-address auto         # join a running Ray cluster
"""


def serve(
    model: Annotated[Path, typer.Option(help="Student folder written by `spatialreward distill`.")],
    backend: Annotated[str, typer.Option(help="Scoring backend, passed to RewardModel.from_pretrained.")] = "torch",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    host: Annotated[str, typer.Option(help="Bind address; a non-loopback one needs --token-file or --insecure.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (23456 is the upstream reward proxy's).")] = 23456,
    max_batch: Annotated[int, typer.Option(help="Edits per model call at most.")] = 256,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill after its first request.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Edits waiting at most; beyond: 503 + Retry-After.")] = 4096,
    max_body_mb: Annotated[float, typer.Option(help="Request body limit, MiB.")] = 256.0,
    max_items: Annotated[int, typer.Option(help="Edits per request at most.")] = 1024,
    max_pixels: Annotated[int, typer.Option(help="Pixels per image at most.")] = 16_000_000,
    timeout_s: Annotated[float, typer.Option(help="Per-request deadline, seconds (then 504).")] = 120.0,
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token clients must send.")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback --host without a token.")] = False,
    ray: Annotated[bool, typer.Option(help="Serve with Ray Serve (same routes; replicas, fractional GPUs).")] = False,
    ray_address: Annotated[str, typer.Option(help="(--ray) 'local' starts Ray here; 'auto' or an address joins a "
                                                  "cluster.")] = "local",
    num_gpus: Annotated[float, typer.Option(help="(--ray) GPUs per replica; fractions share a GPU.")] = 0.0,
    replicas: Annotated[int, typer.Option(help="(--ray) Number of replicas.")] = 1,
    num_cpus: Annotated[float, typer.Option(help="(--ray) CPUs per replica.")] = 1.0,
) -> None:
    """Serve rewards over HTTP: POST /v1/score (JSON), POST / (SpatialReward reward-server protocol), GET /ping,
    /health, /metrics."""
    from spatialreward.serving.config import ServeConfig

    if not (model / "config.json").is_file():
        raise CLIError(f"--model {model}: no config.json (train one with `spatialreward distill --out {model}`)")
    token = None
    if token_file is not None:
        if not token_file.is_file():
            raise CLIError(f"--token-file {token_file}: no such file")
        token = token_file.read_text().strip()
    try:
        cfg = ServeConfig(model=str(model), backend=backend, device=device, host=host, port=port,
                          max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                          max_body_bytes=int(max_body_mb * 1024 * 1024), max_items=max_items, max_pixels=max_pixels,
                          request_timeout_s=timeout_s, token=token, insecure=insecure)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if ray:
        from spatialreward.serving.ray_serve import run_ray

        try:
            run_ray(cfg, address=ray_address, num_gpus=num_gpus, replicas=replicas, num_cpus=num_cpus)
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        return
    from spatialreward.serving.server import serve as run

    run(cfg)


serve.__doc__ = (serve.__doc__ or "") + SERVE_EXAMPLES
