"""The labeling pipeline as a Ray Data job: the same plan, shards and report as `pipeline.label_dataset`.

The driver does what must happen once — lock the label folder, read existing shards, plan the work in group
order, write shards, count — through the same `LabelRun`. Ray does the judging: ``map_batches`` over an actor
pool, each actor holding one teacher built from the spec (one transformers model per GPU, or one HTTP client
pool per actor). Records travel back as JSON strings, so Arrow never reshapes a field.

``ray`` (the address, `LabelConfig.ray`): ``local`` (or ``""``) starts a private Ray on this machine with
``ray_cpus``; ``auto`` joins the Ray cluster running on this machine, else starts a private one; anything else
(``ray://head:10001``) is passed to ``ray.init``. A cluster is the same code with an address; its workers need
this package installed and the dataset folder at the same path (a shared filesystem).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from spatialreward.teacher.pipeline import LabelConfig, LabelReport, LabelRun, judge_safely, label_config
from spatialreward.teacher.registry import TeacherSpec, make_teacher, resolve_teacher
from spatialreward.teacher.config import TeacherConfig
from spatialreward.types import EditSample, Judgement


class TeacherActor:
    """One teacher in one Ray actor; ``__call__`` judges a batch of JSON samples into JSON records."""

    def __init__(self, spec: str, config: dict[str, Any], root: str):
        self.teacher = make_teacher(spec, TeacherConfig(**config))
        self.root = root

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples = [EditSample.model_validate_json(s) for s in batch["sample"]]
        judgements = judge_safely(self.teacher, samples, self.root)
        return {"record": np.array([j.model_dump_json() for j in judgements], dtype=object)}


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to or start Ray as described in the module docstring; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}
    if address in (None, "", "local"):
        ray.init(num_cpus=num_cpus, **quiet)
        return True
    if address == "auto":
        try:
            ray.init(address="auto", logging_level="WARNING", log_to_driver=False)
            return True
        except ConnectionError:
            ray.init(num_cpus=num_cpus, **quiet)
            return True
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    return True


def label_dataset_ray(
    data_dir: str | Path, spec: str | TeacherSpec, config: TeacherConfig | None = None,
    label: LabelConfig | None = None, **overrides: Any,
) -> LabelReport:
    """`label_dataset`, with the judging spread over a Ray actor pool.

    Arguments:
        data_dir: dataset folder.
        spec: a teacher spec (``oracle``, ``vlm:...``, ``openai:...``); each actor builds its own teacher from it.
        config: VLM teacher settings, shipped to every actor.
        label: how the run goes (`LabelConfig`), with ``overrides`` of its fields. Ray fields: ``ray`` (where Ray
            runs, module docstring; default ``local`` here), ``ray_cpus`` (only for a Ray started here),
            ``ray_actors`` (default: one per GPU for ``vlm:`` — 1 without GPUs —, 2 for ``openai:``, each already
            keeping ``concurrency`` requests in flight, CPUs − 1 for ``oracle``), ``ray_gpus_per_actor`` (default 1
            for ``vlm:`` on a cluster with GPUs, else 0). ``batch_size`` defaults to ``config.batch_size`` for vlm,
            ``concurrency`` for openai.
    """
    import ray
    import ray.data

    config = config or TeacherConfig()
    label = label_config(label, overrides)
    resolved = resolve_teacher(spec, config)
    parsed = resolved.spec
    started = init_ray(label.ray if label.ray is not None else "local", label.ray_cpus)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        gpus_per_actor = label.ray_gpus_per_actor
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if parsed.kind == "vlm" and gpus > 0 else 0.0
        num_actors = label.ray_actors or {"vlm": max(1, gpus), "openai": 2, "oracle": max(1, cpus - 1)}[parsed.kind]
        batch_size = label.batch_size or {"vlm": config.batch_size, "openai": config.concurrency,
                                          "oracle": 16}[parsed.kind]

        run = LabelRun(data_dir, resolved.name, resolved.prompt_version, label, identity=resolved.identity)
        with run:
            if not run.todo:
                return run.report
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the run's own bar counts edits/s and parse failures
            items = [{"sample": s.model_dump_json()} for s in run.todo]
            dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
            judged = dataset.map_batches(
                TeacherActor,
                fn_constructor_kwargs={"spec": str(parsed), "config": config.to_dict(), "root": str(run.root)},
                batch_size=batch_size, batch_format="numpy", concurrency=num_actors, num_cpus=1,
                num_gpus=gpus_per_actor,
            )
            for batch in judged.iter_batches(batch_size=None, batch_format="numpy"):
                run.record([Judgement.model_validate_json(r) for r in batch["record"]])
        return run.report
    finally:
        if started:
            ray.shutdown()
