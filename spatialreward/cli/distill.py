"""`spatialreward distill`: train a student on a teacher's labels (options mirror `DistillConfig` fields)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spatialreward.cli._errors import CLIError

DISTILL_EXAMPLES = """
Examples:
  spatialreward distill --preset nano --data data/synth --out runs/nano --max-minutes 30
  spatialreward distill --preset nano --data data/synth --out runs/nano --max-minutes 60 --resume
  torchrun --nproc-per-node 2 -m spatialreward distill --preset tiny --data data/synth --out runs/tiny --max-steps 5000
"""


def _help(name: str) -> str:
    from dataclasses import fields

    from spatialreward.student.distill import DistillConfig

    for f in fields(DistillConfig):
        if f.name == name:
            return f.metadata["help"][0].upper() + f.metadata["help"][1:] + "."
    raise KeyError(name)


def _passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning. On a CPU shared with other jobs, spinning threads stall
    each other: a nano step of 64 edits took 5–8 s with 2 spinning threads at load 5 on 2 cores, 1.3–1.6 s with
    passive ones. Only effective before torch loads OpenMP; an explicit OMP_WAIT_POLICY wins."""
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def distill(
    data: Annotated[Path, typer.Option(help=_help("data"))],
    out: Annotated[Path, typer.Option(help=_help("out"))],
    preset: Annotated[str, typer.Option(help=_help("preset"))] = "nano",
    teacher: Annotated[str, typer.Option(help=_help("teacher"))] = "oracle",
    max_minutes: Annotated[float | None, typer.Option(help=_help("max_minutes"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=_help("max_steps"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_help("resume"))] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=_help("overwrite"))] = False,
    pretrained: Annotated[str | None, typer.Option(help=_help("pretrained"))] = None,
    img_size: Annotated[int | None, typer.Option(help=_help("img_size"))] = None,
    groups_per_batch: Annotated[int, typer.Option(help=_help("groups_per_batch"))] = 8,
    lr: Annotated[float, typer.Option(help=_help("lr"))] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help=_help("weight_decay"))] = 0.05,
    warmup_steps: Annotated[int, typer.Option(help=_help("warmup_steps"))] = 100,
    grad_clip: Annotated[float, typer.Option(help=_help("grad_clip"))] = 1.0,
    amp: Annotated[str, typer.Option(help=_help("amp"))] = "auto",
    ema_decay: Annotated[float, typer.Option(help=_help("ema_decay"))] = 0.0,
    subscore_loss: Annotated[str, typer.Option(help=_help("subscore_loss"))] = "nll",
    ranking_loss: Annotated[str, typer.Option(help=_help("ranking_loss"))] = "pairwise",
    w_ranking: Annotated[float, typer.Option(help=_help("w_ranking"))] = 1.0,
    w_advantage: Annotated[float, typer.Option(help=_help("w_advantage"))] = 0.5,
    w_mask: Annotated[float, typer.Option(help=_help("w_mask"))] = 1.0,
    teacher_forcing: Annotated[float, typer.Option(help=_help("teacher_forcing"))] = 0.5,
    train_split: Annotated[str, typer.Option(help=_help("train_split"))] = "train",
    eval_split: Annotated[str, typer.Option(help=_help("eval_split"))] = "heldout",
    max_train_groups: Annotated[int | None, typer.Option(help=_help("max_train_groups"))] = None,
    max_eval_groups: Annotated[int | None, typer.Option(help=_help("max_eval_groups"))] = None,
    eval_every_minutes: Annotated[float, typer.Option(help=_help("eval_every_minutes"))] = 3.0,
    save_every_minutes: Annotated[float, typer.Option(help=_help("save_every_minutes"))] = 5.0,
    seed: Annotated[int, typer.Option(help=_help("seed"))] = 0,
    num_threads: Annotated[int | None, typer.Option(help=_help("num_threads"))] = None,
    device: Annotated[str, typer.Option(help=_help("device"))] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help=_help("progress"))] = True,
) -> None:
    """Distil a teacher's labels into a dual-stream ViT student; writes OUT/model.safetensors + config.json."""
    _passive_openmp()
    from rich import print as rprint

    from spatialreward.student.distill import DistillConfig, Distiller
    from spatialreward.student.presets import list_presets

    if preset not in list_presets():
        raise CLIError(f"--preset {preset!r} is unknown; choose one of {', '.join(list_presets())}")
    if not (data / "samples.jsonl").is_file():
        raise CLIError(f"--data {data}: no samples.jsonl (make one with `spatialreward synth --out {data}`)")
    try:
        cfg = DistillConfig(
            data=str(data), out=str(out), preset=preset, teacher=teacher, max_minutes=max_minutes,
            max_steps=max_steps, resume=resume, overwrite=overwrite, pretrained=pretrained, img_size=img_size,
            groups_per_batch=groups_per_batch, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
            grad_clip=grad_clip, amp=amp, ema_decay=ema_decay, subscore_loss=subscore_loss,
            ranking_loss=ranking_loss, w_ranking=w_ranking, w_advantage=w_advantage, w_mask=w_mask,
            teacher_forcing=teacher_forcing, train_split=train_split, eval_split=eval_split,
            max_train_groups=max_train_groups, max_eval_groups=max_eval_groups,
            eval_every_minutes=eval_every_minutes, save_every_minutes=save_every_minutes, seed=seed,
            num_threads=num_threads, device=device, progress=progress,
        )
        distiller = Distiller(cfg)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    out_dir = distiller.train()
    if distiller.is_main:
        rprint(f"wrote [bold]{out_dir}[/bold] (model.safetensors, config.json, checkpoint/, metrics.jsonl); "
               f"evaluate with `spatialreward eval --model {out_dir} --data {data}`")


distill.__doc__ = (distill.__doc__ or "") + "\n" + DISTILL_EXAMPLES
