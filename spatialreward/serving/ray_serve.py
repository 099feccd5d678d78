"""The reward server as a Ray Serve deployment: the same app and model worker on every replica.

    spatialreward serve --model runs/nano --ray local --replicas 2 --num-gpus 0.5    # two replicas share one GPU
    spatialreward serve --model runs/nano --ray auto                                  # join a running cluster

Each replica builds the `RewardService` of the plain server (its `ModelWorker` with dynamic batching, the bounded
queue, the shared-source cache, the limits, the token check) and serves the very FastAPI app of `create_app`
behind Ray's HTTP proxy, so ``POST /v1/score``, ``POST /`` (SpatialReward protocol), ``/ping``, ``/health`` and
``/metrics`` answer exactly as they do without Ray. Batching stays in the replica's `ModelWorker` rather than
``@serve.batch``: one batching policy (max-batch / max-wait, in edits, not requests), and a GRPO group's candidates
that reach one replica in separate requests still share one source encoding. ``max_ongoing_requests`` is raised
from Ray's default of 5 so that concurrent requests can meet in one batch; beyond it, Ray queues them at the proxy.
``/metrics`` is per replica (whichever replica answers).

Binding follows the plain server: loopback unless a token (or ``--insecure``) allows more; the proxy listens on
``config.host:config.port``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from ray import serve

from spatialreward.serving.config import ServeConfig

log = logging.getLogger("spatialreward.serving")
APP_NAME = "spatialreward"


class RewardReplica:
    """One replica's state: the service of the plain server. ``model`` (a `RewardModel`) is shipped by Ray when
    given (tests, embedding); otherwise each replica loads ``config.model`` itself, on its own (fractional) GPU."""

    def __init__(self, config: dict[str, Any], model=None):
        from spatialreward.serving.app import RewardService

        self.config = ServeConfig(**config)
        self.service = RewardService(self.config, model)

    def __serve_build_asgi_app__(self):  # Ray calls it after __init__; the app's lifespan starts the worker
        from spatialreward.serving.app import create_app

        return create_app(self.config, service=self.service)

    def check_health(self) -> None:
        """Ray's replica health check: a replica whose model worker died is restarted."""
        if self.service.worker._thread is not None and not self.service.worker.alive:
            raise RuntimeError("the model worker thread is not running")


def build_app(config: ServeConfig, *, model=None, replicas: int = 1, num_gpus: float = 0.0, num_cpus: float = 1.0,
              max_ongoing_requests: int = 256):
    """The bound Ray Serve application (``serve.run`` it). ``num_gpus`` per replica may be a fraction."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas}; it must be at least 1")
    if num_gpus < 0 or num_cpus < 0:
        raise ValueError(f"num_gpus={num_gpus}, num_cpus={num_cpus}; resources cannot be negative")
    if num_gpus > 0 and not config.device.startswith("cuda"):
        raise ValueError(f"--num-gpus {num_gpus} with --device {config.device}: pass --device cuda so the replica "
                         "uses the GPU Ray gives it")
    if num_gpus == 0 and config.device.startswith("cuda"):
        raise ValueError(f"--device {config.device} with --num-gpus 0: Ray hides the GPUs from a replica that asks for "
                         "none; pass --num-gpus (e.g. 0.5 for two replicas per GPU)")
    deployment = serve.deployment(
        serve.ingress()(RewardReplica),
        name="SpatialReward",
        num_replicas=replicas,
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus},
        max_ongoing_requests=max_ongoing_requests,
    )
    return deployment.bind(asdict(config), model)


def start(config: ServeConfig, *, address: str = "local", model=None, replicas: int = 1, num_gpus: float = 0.0,
          num_cpus: float = 1.0, blocking: bool = False, ray_init_kwargs: dict | None = None):
    """Connect to (``auto`` / an address) or start (``local``) Ray, start Serve's proxy on ``config.host:port``
    and run the app. Returns the app's handle; with ``blocking`` it serves until interrupted."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 **(ray_init_kwargs or {}))
    serve.start(http_options={"host": config.host, "port": config.port})
    app = build_app(config, model=model, replicas=replicas, num_gpus=num_gpus, num_cpus=num_cpus)
    return serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)


def run_ray(config: ServeConfig, *, address: str = "local", num_gpus: float = 0.0, replicas: int = 1,
            num_cpus: float = 1.0) -> None:
    """The CLI path: serve until Ctrl-C, then shut the application down."""
    try:
        start(config, address=address, replicas=replicas, num_gpus=num_gpus, num_cpus=num_cpus, blocking=True)
    finally:
        serve.shutdown()
