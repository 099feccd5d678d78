"""Distil a teacher's judgements into the student: `DistillConfig` (every knob) and `Distiller` (the loop).

    from spatialreward.student.distill import DistillConfig, Distiller

    cfg = DistillConfig(data="data/synth", out="runs/nano", preset="nano", max_minutes=30)
    Distiller(cfg).train()          # → runs/nano/{model.safetensors, config.json, metrics.jsonl, ...}

The loop: whole GRPO groups per batch (`GroupBatchSampler`), AdamW with linear warm-up and a cosine decay over
*progress* (the larger of steps/max_steps and time/max_minutes, so a time-boxed run still anneals), gradient
clipping, AMP where the device supports it, optional EMA, periodic evaluation on the held-out split (monitoring
only: the final weights are the last ones, nothing is selected on held-out numbers), checkpoints every few minutes
(atomic, resumable), TensorBoard scalars and a rich progress bar. Under ``torchrun`` it runs DDP (gloo on CPU,
NCCL on CUDA); rank 0 logs and writes.

Determinism: the batch order depends on ``(seed, epoch)``, and every step reseeds torch with ``seed + step``, so a
resumed run takes exactly the step the uninterrupted run would have taken (with ``max_steps`` only; a time-based
schedule depends on the clock by design).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from spatialreward.student import checkpoint as ckpt
from spatialreward.student.data import EditData, GroupBatchSampler, load_split, mask_target_size, token_coverage
from spatialreward.student.losses import LossWeights, distill_loss
from spatialreward.student.model import PreparedImages, Student, StudentConfig
from spatialreward.student.monitor import TrainingMonitor, eval_note, flat_metrics, plot_training_curves
from spatialreward.student.presets import preset_config
from spatialreward.student.run_folder import CURVES_FILE, DATA_REPORT_FILE, DISTILL_CONFIG_FILE, METRICS_LOG, RunFolder
from spatialreward.student.text import text_encoder_for


def parse_operations(text: str) -> tuple[str, ...]:
    """``exclude_operations`` as written (``"texture, move"``) → its operation names."""
    return tuple(op.strip() for op in str(text).split(",") if op.strip())


@dataclass
class DistillConfig:
    """Parameters of `spatialreward distill`.

    Data: ``data``, ``teacher``, ``train_split``, ``eval_split``, ``max_train_groups``, ``max_eval_groups``,
    ``workers``, ``prepare_images``. Model: ``preset``, ``img_size``, ``pretrained``. Budget: ``max_steps``,
    ``max_minutes``.
    Optimisation: ``groups_per_batch``, ``lr``, ``weight_decay``, ``warmup_steps``, ``min_lr_ratio``,
    ``grad_clip``, ``amp``, ``ema_decay``, ``seed``, ``num_threads``. Losses: ``subscore_loss``, ``ranking_loss``,
    ``ranking_temperature``, ``w_*``, ``teacher_forcing``. Output: ``out``, ``eval_every_minutes``,
    ``eval_every_steps``, ``save_every_minutes``, ``save_every_steps``, ``log_every_steps``, ``tensorboard``,
    ``progress``, ``resume``, ``overwrite``.
    """

    # Data
    data: str = field(default="", metadata={"help": "dataset folder (samples.jsonl + images + labels/<teacher>/)"})
    out: str = field(default="", metadata={"help": "output folder: weights, config, checkpoint, logs"})
    teacher: str = field(default="oracle", metadata={"help": "whose labels to distil (labels/<teacher>/)"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str = field(default="heldout", metadata={"help": "split for periodic evaluation ('' = none)"})
    max_train_groups: int | None = field(default=None, metadata={"help": "use only the first N train groups"})
    max_eval_groups: int | None = field(default=None, metadata={"help": "periodic eval on the first N groups"})
    exclude_operations: str = field(default="", metadata={
        "help": "comma-separated edit operations never trained on (e.g. texture): the generalisation report's "
                "per-operation rows then measure an unseen operation"})
    workers: int = field(default=2, metadata={"help": "threads decoding images at start-up"})
    prepare_images: bool = field(default=True, metadata={
        "help": "compute the weight-free part of each train image once at start-up (pooling, pixel statistics) "
                "instead of at every step: same training, a faster step and less memory"})
    # Model
    preset: str = field(default="nano", metadata={"help": "student preset (nano, tiny, small)"})
    img_size: int | None = field(default=None, metadata={"help": "override the preset's input side"})
    pretrained: str | None = field(default=None, metadata={"help": "backbone weights: .safetensors file or timm name"})
    init_from: str | None = field(
        default=None,
        metadata={"help": "a student folder whose weights start this run (e.g. from `spatialreward pretrain`); "
                          "its architecture must be this run's"},
    )
    # Budget
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimiser steps"})
    max_minutes: float | None = field(default=None, metadata={"help": "stop after this much training time"})
    # Optimisation
    groups_per_batch: int = field(default=8, metadata={"help": "whole GRPO groups per batch (per process)"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(default=0.02, metadata={"help": "final LR as a share of the peak (cosine floor)"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = off)"})
    amp: Literal["auto", "off", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "mixed precision: auto = bf16/fp16 on CUDA, off on CPU"}
    )
    ema_decay: float = field(default=0.0, metadata={"help": "EMA of weights (0 = off; e.g. 0.999)"})
    seed: int = field(default=0, metadata={"help": "seed of init, batch order and teacher forcing"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None = torch default)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    # Losses
    subscore_loss: Literal["nll", "huber"] = field(default="nll", metadata={"help": "sub-score regression loss"})
    ranking_loss: Literal["pairwise", "listwise"] = field(default="pairwise", metadata={"help": "within-group ranking"})
    ranking_temperature: float = field(default=0.05, metadata={"help": "ranking temperature in reward units"})
    ranking_gap_weighted: bool = field(
        default=False, metadata={"help": "weigh pairs by their teacher gap (off: every pair counts, as in the metric)"}
    )
    w_subscore: float = field(default=1.0, metadata={"help": "weight of the sub-score loss"})
    w_ranking: float = field(default=1.0, metadata={"help": "weight of the ranking loss"})
    w_subscore_ranking: float = field(
        default=0.0, metadata={"help": "weight of the within-group ranking of each sub-score (0 = off)"}
    )
    w_advantage: float = field(default=0.5, metadata={"help": "weight of 1 − within-group reward correlation"})
    w_reward: float = field(default=0.0, metadata={"help": "weight of reward MSE (×100)"})
    w_mask: float = field(default=1.0, metadata={"help": "weight of the mask loss (BCE + Dice)"})
    w_presence: float = field(default=0.2, metadata={"help": "weight of the presence BCE"})
    teacher_forcing: float = field(
        default=0.5, metadata={"help": "share of steps whose region (RoIAlign box, attention mask) is the teacher's"}
    )
    novelty_fit_groups: int = field(
        default=800, metadata={"help": "after training, fit the novelty check on this many train groups, calibrated "
                                       "on the eval split (0 = skip; `spatialreward novelty` refits)"}
    )
    # Output
    eval_every_minutes: float = field(default=3.0, metadata={"help": "periodic evaluation interval (0 = off)"})
    eval_every_steps: int | None = field(default=None, metadata={"help": "evaluate every N steps instead"})
    save_every_minutes: float = field(default=5.0, metadata={"help": "checkpoint interval"})
    save_every_steps: int | None = field(default=None, metadata={"help": "also checkpoint every N steps"})
    log_every_steps: int = field(default=10, metadata={"help": "TensorBoard / metrics.jsonl interval"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard scalars to OUT/tensorboard"})
    progress: bool = field(default=True, metadata={"help": "show a rich progress bar"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/checkpoint"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace a run already in OUT (with resume: only when there is no checkpoint to resume)"},
    )

    @property
    def excluded_operations(self) -> tuple[str, ...]:
        return parse_operations(self.exclude_operations)

    def __post_init__(self) -> None:
        from spatialreward.synth.operations import OPERATIONS

        unknown = sorted(set(self.excluded_operations) - set(OPERATIONS))
        if unknown:
            raise ValueError(f"exclude_operations: unknown {unknown}; operations are {', '.join(OPERATIONS)}")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("set a budget: max_steps and/or max_minutes (e.g. --max-minutes 30 for nano)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes={self.max_minutes} must be > 0")
        for name in ("save_every_steps", "eval_every_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or None = off)")
        if self.groups_per_batch < 1:
            raise ValueError(
                f"groups_per_batch={self.groups_per_batch}: a batch holds whole GRPO groups, at least 1; the "
                "ranking losses compare members of one group, so a batch never splits a group"
            )
        for name, allowed in (("amp", ("auto", "off", "bf16", "fp16")), ("subscore_loss", ("nll", "huber")),
                              ("ranking_loss", ("pairwise", "listwise"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing={self.teacher_forcing} is a probability; use a value in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1) (0 turns EMA off; 0.999 is typical)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.lr <= 0 or self.ranking_temperature <= 0:
            raise ValueError(f"lr={self.lr} and ranking_temperature={self.ranking_temperature} must be > 0")
        weights = [getattr(self, f.name) for f in fields(self) if f.name.startswith("w_")]
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"loss weights {weights} must be >= 0 with at least one > 0")

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(
            subscore=self.w_subscore, ranking=self.w_ranking, subscore_ranking=self.w_subscore_ranking,
            advantage=self.w_advantage, reward=self.w_reward,
            mask=self.w_mask, presence=self.w_presence,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dist_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def lr_factor(progress: float, step: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from 1 to ``min_ratio`` over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return warm * cosine


class Distiller:
    """Trains a `Student` on one teacher's labels. ``text_encoder`` (anything with ``encode(list[str])``) may be
    injected, e.g. to share one loaded MiniLM between runs; by default the config's encoder is loaded.

    Set-up in ``__init__`` (processes, run folder, model, data, optimiser, EMA, AMP), one optimiser step in
    `train_step`, the loop in `train`. The run folder's policy (resume, overwrite, when to save, the metrics log)
    is `RunFolder`'s; held-out evaluation, the progress bar and the curves are `TrainingMonitor`'s.
    """

    def __init__(self, cfg: DistillConfig, *, text_encoder=None, student_config: StudentConfig | None = None):
        self.cfg = cfg
        # -- processes and device
        self.rank, self.local_rank, self.world_size = _dist_info()
        self.is_main = self.rank == 0
        self.distributed = self.world_size > 1
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = self._pick_device(cfg.device)
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

        # -- the run folder: resume, replace or start (rank 0 recovers or clears; then every rank loads the same)
        self.run = RunFolder(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite, is_main=self.is_main)
        self.out = self.run.out
        if self.is_main:
            self.run.prepare()
        if self.distributed:
            torch.distributed.barrier()
        resume_state = None
        resume_dir = self.run.checkpoint_to_resume()
        if resume_dir is not None:
            resume_state = ckpt.load_training_checkpoint(resume_dir)
            student_config = StudentConfig.from_dict(resume_state["student_config"])

        # -- the model
        if student_config is None:
            overrides = {"img_size": cfg.img_size} if cfg.img_size else {}
            student_config = preset_config(cfg.preset, **overrides)
        torch.manual_seed(cfg.seed)
        self.model: Student = Student(student_config).to(self.device)
        self.backbone_report = None
        if cfg.pretrained and resume_state is None:
            self.backbone_report = self.model.load_pretrained_backbone(cfg.pretrained)
        self.init_report = None
        if cfg.init_from and resume_state is None:
            self.init_report = self.model.load_initial_weights(cfg.init_from)

        # -- the data: train split on every rank, the eval split on rank 0
        text_encoder = text_encoder_for(student_config, text_encoder)
        self.mask_size = mask_target_size(student_config.grid)
        self.train_data: EditData = load_split(
            cfg.data, split=cfg.train_split, teacher=cfg.teacher, img_size=student_config.input_size,
            mask_size=self.mask_size, text_encoder=text_encoder, max_groups=cfg.max_train_groups,
            workers=cfg.workers, progress=cfg.progress and self.is_main, exclude_operations=cfg.excluded_operations,
        )
        if cfg.prepare_images and self.model.can_prepare:
            dev = self.device
            self.train_data.prepare(lambda x: self.model.prepare_images(x.to(dev)).to("cpu"),
                                    self.model.prepare_levels, progress=cfg.progress and self.is_main)
        eval_data: EditData | None = None
        if cfg.eval_split and self.is_main:
            try:
                eval_data = load_split(
                    cfg.data, split=cfg.eval_split, teacher=cfg.teacher, img_size=student_config.input_size,
                    mask_size=self.mask_size, text_encoder=text_encoder, max_groups=cfg.max_eval_groups,
                    workers=cfg.workers, progress=cfg.progress,
                )
            except ValueError as exc:  # no such split: train anyway, say so
                self._print(f"[yellow]no periodic evaluation: {exc}[/yellow]")
        self.monitor = TrainingMonitor(
            eval_data, device=self.device, eval_every_steps=cfg.eval_every_steps,
            eval_every_minutes=cfg.eval_every_minutes, progress=self.is_main and cfg.progress,
        )
        self.sampler = GroupBatchSampler(
            self.train_data.group, cfg.groups_per_batch, seed=cfg.seed, rank=self.rank, world_size=self.world_size
        )

        # -- optimiser (no weight decay on norms, biases, position embedding, class token) and EMA
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.999),
        )
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.ema_decay > 0:
            self.ema = {k: v.detach().clone().float() for k, v in self.model.state_dict().items()}
        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over resumed runs
        if resume_state is not None:
            self.model.load_state_dict(resume_state["model_state"])
            self.optimizer.load_state_dict(resume_state["optimizer_state"])
            if self.ema is not None and resume_state["ema_state"] is not None:
                self.ema = {k: v.float() for k, v in resume_state["ema_state"].items()}
            state = resume_state["trainer_state"]
            self.step, self.elapsed = int(state["step"]), float(state["elapsed_seconds"])
            self.run.resumed_step = self.step

        # -- DDP and mixed precision
        self.ddp_model = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.amp_dtype = self._amp_dtype(cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    # -- set-up helpers -------------------------------------------------------------------------------------------

    def _pick_device(self, name: str) -> torch.device:
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank)
            return torch.device("cpu")
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} but CUDA is not available here; use --device cpu")
        return dev

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None  # CPU autocast is slower than fp32 on most CPUs for these small matmuls
        if amp == "fp16":
            return torch.float16
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _print(self, msg: str) -> None:
        if self.is_main and self.cfg.progress:
            from rich.console import Console

            Console(stderr=True).print(msg)

    @property
    def eval_data(self) -> EditData | None:
        return self.monitor.eval_data

    @property
    def last_eval(self) -> dict[str, Any] | None:
        """Metrics of the latest held-out evaluation (None before the first)."""
        return self.monitor.last_eval

    # -- one step -------------------------------------------------------------------------------------------------

    def batch_for_step(self, step: int) -> dict[str, Any]:
        """The batch of global step ``step`` (a pure function of config and step: resume-safe)."""
        epoch, position = divmod(step, len(self.sampler))
        indices = self.sampler.epoch_batches(epoch)[position]
        batch = self.train_data.collate(indices)
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
        batch["teacher_forced"] = bool(torch.rand((), generator=gen) < self.cfg.teacher_forcing)
        return batch

    def progress_fraction(self) -> float:
        parts = []
        if self.cfg.max_steps:
            parts.append(self.step / self.cfg.max_steps)
        if self.cfg.max_minutes:
            parts.append(self.elapsed / (60.0 * self.cfg.max_minutes))
        return max(parts)

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns the loss parts (floats)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed + 1_000_003 * (self.step + 1))  # dropout etc.: same step → same noise
        batch = self.batch_for_step(self.step)
        factor = lr_factor(self.progress_fraction(), self.step, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        dev = self.device
        tensors = {k: v.to(dev, non_blocking=True) for k, v in batch.items()
                   if isinstance(v, (torch.Tensor, PreparedImages))}
        region_boxes = region_mask = None
        if batch["teacher_forced"]:
            region_boxes = tensors["region_boxes"]
            region_mask = token_coverage(tensors["mask"], self.model.cfg.grid)
        self.model.train()
        autocast = (
            torch.autocast(dev.type, dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            out = self.ddp_model(
                tensors["source"], tensors["edited"], tensors["text"], region_boxes, region_mask,
                tensors["source_index"],
            )
        out = type(out)(*(t.float() if t is not None else None for t in out))
        loss, parts = distill_loss(
            out, tensors, cfg.loss_weights, subscore_kind=cfg.subscore_loss, ranking_kind=cfg.ranking_loss,
            ranking_temperature=cfg.ranking_temperature, ranking_gap_weighted=cfg.ranking_gap_weighted,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {self.step}: loss is {loss.item()} (parts {({k: v.item() for k, v in parts.items()})}); "
                "lower --lr or enable --grad-clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if cfg.grad_clip > 0 else torch.tensor(0.0)
        )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    if v.dtype.is_floating_point:
                        self.ema[k].mul_(cfg.ema_decay).add_(v.float(), alpha=1.0 - cfg.ema_decay)
                    else:
                        self.ema[k].copy_(v)
        self.step += 1
        result = {f"loss/{k}": float(v.detach()) for k, v in parts.items()}
        result.update({"loss/total": float(loss.detach()), "lr": cfg.lr * factor, "grad_norm": float(grad_norm),
                       "batch_edits": len(batch["index"])})
        return result

    # -- what the loop calls --------------------------------------------------------------------------------------

    def eval_model(self) -> Student:
        """The weights to evaluate and export: the EMA when enabled, else the live model."""
        if self.ema is None:
            return self.model
        model = Student(self.model.cfg).to(self.device)
        model.load_state_dict({k: v.to(self.model.state_dict()[k].dtype) for k, v in self.ema.items()})
        return model

    def evaluate(self) -> dict[str, Any] | None:
        """Held-out metrics of `eval_model` (None without an eval split)."""
        return self.monitor.evaluate(self.eval_model())

    def save_checkpoint(self) -> None:
        self.run.save(
            self.elapsed,
            model_state=self.model.state_dict(),
            student_config=asdict(self.model.cfg),
            optimizer_state=self.optimizer.state_dict(),
            trainer_state={"step": self.step, "elapsed_seconds": self.elapsed, "distill_config": self.cfg.to_dict()},
            ema_state=self.ema,
        )

    def should_stop(self) -> bool:
        cfg = self.cfg
        done = (cfg.max_steps is not None and self.step >= cfg.max_steps) or (
            cfg.max_minutes is not None and self.elapsed >= 60.0 * cfg.max_minutes
        )
        if self.distributed:  # all ranks must agree, or one would wait forever in all-reduce
            flag = torch.tensor([1.0 if done else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            done = bool(flag.item() > 0)
        return done

    def _fit_novelty(self) -> None:
        """Fit the novelty check of the final student (`student.novelty`) on the loaded train groups, calibrated on
        the eval split, and write it beside the weights. Too little data skips it with a note, never the run."""
        from spatialreward.student.novelty import fit_student, save_novelty

        cfg = self.cfg
        if cfg.novelty_fit_groups <= 0 or self.eval_data is None:
            return
        record = {"data": str(cfg.data), "teacher": cfg.teacher, "fit_split": cfg.train_split,
                  "calibration_split": cfg.eval_split}
        try:  # the eval split keeps excluded operations (to measure them): they are not "like training"
            det = fit_student(self.eval_model(), self.train_data, self.eval_data,
                              fit_groups=cfg.novelty_fit_groups, skip_operations=cfg.excluded_operations,
                              record=record)
        except ValueError as exc:
            self._print(f"novelty check not fitted: {exc}")
            return
        path = save_novelty(det, self.out)
        self._print(f"novelty check: {path.name} ({det.record['fit_edits']} fit, "
                    f"{det.record['calibration_edits']} calibration edits)")

    def _log_eval(self, metrics: dict[str, Any] | None, **extra: Any) -> None:
        self.run.log({"step": self.step, "elapsed_s": round(self.elapsed, 2), **extra,
                      **{f"eval/{k}": v for k, v in flat_metrics(metrics).items()}})

    def _write_run_info(self) -> None:
        """distill_config.json, data_report.json and the opening lines (rank 0)."""
        if not self.is_main:
            return
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.run.write_json(DISTILL_CONFIG_FILE, cfg.to_dict())
        report = {"train": self.train_data.report.to_dict()}
        if self.eval_data is not None:
            report["eval"] = self.eval_data.report.to_dict()
        if self.backbone_report is not None:
            report["pretrained_backbone"] = {k: len(v) for k, v in self.backbone_report.items()}
        if self.init_report is not None:
            report["init_from"] = self.init_report
        self.run.write_json(DATA_REPORT_FILE, report)
        self._print(f"train: {self.train_data.report.summary()}")
        if self.eval_data is not None:
            self._print(f"{cfg.eval_split}: {self.eval_data.report.summary()}")
        if self.run.resumed_step is not None:
            self._print(f"resuming {self.out / ckpt.CHECKPOINT_DIR} at step {self.step}")
        self._print(
            f"student {self.model.cfg.embed_dim}w×{self.model.cfg.depth} at {self.model.cfg.img_size}px "
            f"(input {self.model.cfg.input_size}px): "
            f"{self.model.num_params() / 1e6:.2f} M params; kernels backend {self.model.kernel_backend}; "
            f"{len(self.sampler)} steps/epoch × {self.world_size} process(es)"
        )

    # -- the loop -------------------------------------------------------------------------------------------------

    def train(self) -> Path:
        """Train until ``max_steps`` or ``max_minutes``; write the final student to ``out``. Returns ``out``."""
        cfg = self.cfg
        self._write_run_info()
        self.run.open_log(tensorboard=cfg.tensorboard, warn=self._print)
        self.run.last_save_elapsed = self.elapsed
        self.monitor.start(self.step, self.elapsed)
        window_edits, window_time, ema_loss = 0, 0.0, None
        try:
            while not self.should_stop():
                # one optimiser step, timed (the clock counts training only, not evaluation or saving)
                t0 = time.perf_counter()
                parts = self.train_step()
                dt = time.perf_counter() - t0
                self.elapsed += dt
                window_edits += parts["batch_edits"] * self.world_size
                window_time += dt
                ema_loss = parts["loss/total"] if ema_loss is None else 0.9 * ema_loss + 0.1 * parts["loss/total"]

                # log the loss parts and the throughput since the last record
                if self.step % cfg.log_every_steps == 0 or self.step == 1:
                    rate = window_edits / max(window_time, 1e-9)
                    self.run.log({"step": self.step, "elapsed_s": round(self.elapsed, 2), "edits_per_s": rate, **parts})
                    window_edits, window_time = 0, 0.0
                    self.monitor.update(rate=rate)

                # evaluate on the held-out split (rank 0; monitoring only)
                if self.is_main and self.monitor.eval_due(self.step, self.elapsed):
                    self.monitor.last_eval_elapsed = self.elapsed
                    metrics = self.evaluate()
                    self._log_eval(metrics)
                    self.monitor.update(metrics=metrics)

                # checkpoint
                if self.run.save_due(self.step, self.elapsed, every_minutes=cfg.save_every_minutes,
                                     every_steps=cfg.save_every_steps):
                    self.save_checkpoint()
                self.monitor.update(completed=self.progress_fraction(), step=self.step, loss=ema_loss)
        finally:
            self.monitor.stop()

        # the end: a last checkpoint, the final student, its held-out metrics and the curves
        self.save_checkpoint()
        if self.is_main:
            self.eval_model().save_pretrained(self.out)
            if self.eval_data is not None:
                metrics = self.evaluate()
                self._log_eval(metrics, final=True)
                self._print(f"final {cfg.eval_split} ({self.step} steps, {self.elapsed / 60:.1f} min): "
                            f"{eval_note(metrics)}")
            self._fit_novelty()
            self.run.close_log()
            plot_training_curves(self.out / METRICS_LOG, self.out / CURVES_FILE,
                                 title=f"{cfg.preset} on {Path(cfg.data).name}")
        if self.distributed:
            torch.distributed.barrier()
        return self.out
