"""Self-supervised change pretraining: the student learns *what changed* and *what looks broken* from unlimited
procedural pairs, before it sees one teacher label.

Why: a few hundred teacher-labelled groups teach a student what its generator's edits look like; its artifacts
sub-score stayed at chance (issue 16) because so few, so similar artifacts are too little to learn a detector from.
Here every step draws fresh pairs from the *training* sources only (no held-out photo, scene style or failure
family, no evaluation-only photo): a clean content change in a random region (a patch of another view pasted in,
or the region recoloured), an artifact family at a random strength in a random area (often the changed one, as an
edit model leaves them), both, or neither. The targets are how the pair was built, so no teacher is needed:

- the changed-pixel mask (mask grid), through the student's own change tokens and segmentation head;
- the artifact map (quality grid), from the **edited image's quality map alone** — the PQ call's view: an artifact
  has to be visible without the source;
- which artifact family (or none), and whether anything changed (the presence head).

``spatialreward pretrain --out DIR`` writes a student folder that ``spatialreward distill --init-from DIR`` starts
from; the pretraining heads stay in the run's checkpoint only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from timm.layers import Mlp
from torch import nn

from spatialreward.student import checkpoint as ckpt
from spatialreward.student.losses import mask_loss, presence_loss
from spatialreward.student.model import Student, StudentConfig
from spatialreward.synth import artifacts as synth_artifacts
from spatialreward.synth import regions as reg
from spatialreward.synth.failures import ARTIFACT_FAMILIES, degrade
from spatialreward.synth.generate import SplitRecipe, SynthConfig, draw_source, split_recipes
from spatialreward.synth.photos import available_photos, random_view, split_photos

VISIBLE = 2.0 / 255  # a pixel counts as changed when its (slightly smoothed) mean |E − S| exceeds this


@dataclass
class PretrainConfig:
    """Parameters of `spatialreward pretrain` (the student's architecture comes from its preset and flags)."""

    out: str = field(default="", metadata={"help": "output folder: the student folder, checkpoint/, metrics"})
    preset: str = field(default="nano", metadata={"help": "student preset (nano, tiny, small)"})
    batch_size: int = field(default=32, metadata={"help": "pairs per step"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimiser steps"})
    max_minutes: float | None = field(default=None, metadata={"help": "stop after this much training time"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    content_p: float = field(default=0.6, metadata={"help": "share of pairs with a clean content change"})
    artifact_p: float = field(default=0.5, metadata={"help": "share of pairs with an artifact family applied"})
    w_mask: float = field(default=1.0, metadata={"help": "weight of the changed-pixel mask loss"})
    w_artifact_map: float = field(default=1.0, metadata={"help": "weight of the artifact-map loss"})
    w_family: float = field(default=0.3, metadata={"help": "weight of the artifact-family cross-entropy"})
    w_presence: float = field(default=0.2, metadata={"help": "weight of the presence BCE"})
    validation_pairs: int = field(default=256, metadata={"help": "fixed pairs from held-out photos, scored at the end"})
    seed: int = field(default=0, metadata={"help": "seed of init and of the pair stream"})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None = torch default)"})
    loader_workers: int = field(default=1, metadata={"help": "processes drawing pairs next to training (0 = inline)"})
    save_every_minutes: float = field(default=5.0, metadata={"help": "checkpoint interval"})
    progress: bool = field(default=True, metadata={"help": "show a rich progress bar"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace a run already in OUT"})

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give a budget: --max-steps N and/or --max-minutes M")
        for name in ("content_p", "artifact_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size} must be at least 2")


# ---------------------------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------------------------


def training_recipe(synth: SynthConfig | None = None) -> tuple[SplitRecipe, tuple[str, ...]]:
    """``(the diverse recipe's training split, the held-out photo names)``: the same photo split, scene styles and
    failure pools as `spatialreward synth`, so pretraining never sees what a generalisation split holds out."""
    synth = synth or SynthConfig()
    train, heldout = split_photos(available_photos(), synth.heldout_fraction)
    return split_recipes(synth, train, heldout, ())["train"], heldout


def _random_region(rng: np.random.Generator, size: int) -> np.ndarray:
    cell = reg.pick_cell(rng)
    return reg.shape_region(rng, size, cell, str(rng.choice(["oval", "disc", "rectangle"]))).mask


def _visible(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ndimage.uniform_filter(np.abs(a - b).mean(-1), 3) > VISIBLE


def _view(rng: np.random.Generator, recipe: SplitRecipe, size: int) -> np.ndarray:
    _, image, _ = draw_source(rng, recipe)
    return random_view(rng, image, size)


def _recolour(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A random colour transform: channel mixing towards another hue, plus a brightness change."""
    mix = np.eye(3, dtype=np.float32) * (1 - rng.uniform(0.4, 1.0)) + rng.dirichlet(np.ones(3), size=3).astype(
        np.float32) * rng.uniform(0.4, 1.0)
    return np.clip(image @ mix.T * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15), 0, 1)


def make_pair(rng: np.random.Generator, recipe: SplitRecipe, size: int, *, content_p: float = 0.6,
              artifact_p: float = 0.5) -> dict[str, Any]:
    """One pair and its targets: ``source``, ``edited`` float32 ``[S, S, 3]``; ``changed`` and ``artifact`` bool
    ``[S, S]``; ``family`` (index into `ARTIFACT_FAMILIES` + 1, 0 = none) and its name."""
    families = recipe.failures.artifacts if recipe.failures is not None else tuple(ARTIFACT_FAMILIES)
    source = _view(rng, recipe, size)
    edited = source.copy()
    if rng.random() < content_p:
        mask = _random_region(rng, size)
        alpha = reg.soft_alpha(mask, rng.uniform(0.5, 3.0) * size / 224)[..., None]
        fill = _view(rng, recipe, size) if rng.random() < 0.5 else _recolour(rng, source)
        edited = source + alpha * (fill - source)
    family, area = "", None
    if rng.random() < artifact_p:
        family = str(families[int(rng.integers(len(families)))])
        if not ARTIFACT_FAMILIES[family].local_only and rng.random() < 0.3:
            area = None  # the whole frame
        else:
            area = _random_region(rng, size)
        clean = edited
        edited = degrade(rng, clean, family, float(rng.uniform(0.25, 1.0)), area, {})
        artifact = _visible(edited, clean) & (np.ones((size, size), bool) if area is None else
                                              ndimage.binary_dilation(area, iterations=max(1, size // 112)))
        if not artifact.any():  # too faint to see anywhere: it is no artifact
            family = ""
    else:
        artifact = np.zeros((size, size), bool)
    edited = synth_artifacts.jitter(rng, edited.astype(np.float32))  # real outputs are never bit-exact copies
    names = list(ARTIFACT_FAMILIES)
    return {
        "source": source.astype(np.float32), "edited": edited.astype(np.float32),
        "changed": _visible(edited, source),
        "artifact": artifact if family else np.zeros((size, size), bool),
        "family": names.index(family) + 1 if family else 0, "family_name": family,
    }


def _pool(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each grid cell a bool mask covers (``[S, S]`` → ``[gh, gw]``)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, grid)[0, 0]


def collate_pairs(pairs: list[dict[str, Any]], cfg: StudentConfig) -> dict[str, torch.Tensor]:
    """Stack pairs into the tensors one step needs (images ``[B, 3, S, S]`` in 0–1, targets on their grids)."""
    def images(key):
        return torch.from_numpy(np.stack([p[key] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    return {
        "source": images("source"), "edited": images("edited"),
        "changed": torch.stack([_pool(p["changed"], cfg.mask_size) for p in pairs]),
        "artifact": torch.stack([_pool(p["artifact"], cfg.quality_grid) for p in pairs]),
        "family": torch.tensor([p["family"] for p in pairs]),
    }


class PairStream(torch.utils.data.IterableDataset):
    """Endless batches of fresh pairs; each loader worker draws its own stream (seed, worker id, resume step)."""

    def __init__(self, cfg: PretrainConfig, student_cfg: StudentConfig, recipe: SplitRecipe, start_step: int = 0):
        self.cfg, self.student_cfg, self.recipe, self.start_step = cfg, student_cfg, recipe, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.cfg.seed, worker, self.start_step])
        size = self.student_cfg.input_size
        while True:
            pairs = [make_pair(rng, self.recipe, size, content_p=self.cfg.content_p, artifact_p=self.cfg.artifact_p)
                     for _ in range(self.cfg.batch_size)]
            yield collate_pairs(pairs, self.student_cfg)


# ---------------------------------------------------------------------------------------------------------------
# Heads and loss
# ---------------------------------------------------------------------------------------------------------------


class PretrainHeads(nn.Module):
    """What pretraining adds to a `Student`: an artifact-map head on the edited image's quality map and an
    artifact-family classifier. Thrown away after pretraining; the student keeps what they taught its encoders."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        if not cfg.quality_map:
            raise ValueError("pretraining teaches the quality map: use a student with --quality-scale >= 1 and "
                             "--quality-dim >= 1")
        q, c = 2 * cfg.quality_dim, cfg.embed_dim
        self.artifact_map = nn.Sequential(nn.Conv2d(q, 32, 1), nn.GELU(), nn.Conv2d(32, 1, 1))
        self.family = Mlp(q + 2 * c, hidden_features=c, out_features=len(ARTIFACT_FAMILIES) + 1)


def pretrain_outputs(model: Student, heads: PretrainHeads, source: torch.Tensor, edited: torch.Tensor) -> dict:
    """Mask logits, presence logit, artifact-map logits (edited image alone) and family logits of a batch."""
    enc = model.encode_images(torch.cat([source, edited]))
    b = source.shape[0]
    src, edt = enc.select(slice(0, b)), enc.select(slice(b, None))
    change, mask_logits = model.locate_change(src, edt)
    area = torch.sigmoid(mask_logits).flatten(1).mean(1, keepdim=True)
    peak = mask_logits.flatten(1).amax(1, keepdim=True)
    presence = model.presence_head(torch.cat([change.mean(1), change.amax(1), peak, area], dim=1))[:, 0]
    q, half = edt.quality, model.cfg.quality_dim
    whole = torch.cat([q[:, :half].mean((2, 3)), q[:, half:].amax((2, 3))], dim=1)
    family = heads.family(torch.cat([whole, change.mean(1), change.amax(1)], dim=1))
    return {"mask": mask_logits, "presence": presence, "artifact_map": heads.artifact_map(q)[:, 0], "family": family}


def pretrain_loss(out: dict, batch: dict, cfg: PretrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    parts = {
        "mask": mask_loss(out["mask"], batch["changed"]),
        "artifact_map": mask_loss(out["artifact_map"], batch["artifact"]),
        "family": F.cross_entropy(out["family"], batch["family"]),
        "presence": presence_loss(out["presence"], (batch["changed"].flatten(1).amax(1) > 0).float()),
    }
    total = (cfg.w_mask * parts["mask"] + cfg.w_artifact_map * parts["artifact_map"]
             + cfg.w_family * parts["family"] + cfg.w_presence * parts["presence"])
    return total, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def validate(model: Student, heads: PretrainHeads, batches: list[dict]) -> dict[str, float]:
    """Changed-mask IoU, artifact-map IoU (on pairs that have an artifact), artifact-vs-clean accuracy of the
    map's peak, family accuracy (artifact pairs) on fixed pairs from held-out photos."""
    model.eval()
    inter = union = a_inter = a_union = 0.0
    detect_hits = family_hits = artifact_pairs = n = 0
    for batch in batches:
        out = pretrain_outputs(model, heads, batch["source"], batch["edited"])
        pred = F.interpolate(out["mask"][:, None], size=batch["changed"].shape[-2:], mode="bilinear")[:, 0] > 0
        truth = batch["changed"] > 0.5
        inter += float((pred & truth).sum())
        union += float((pred | truth).sum())
        has = batch["family"] > 0
        a_pred, a_truth = out["artifact_map"] > 0, batch["artifact"] > 0.5
        a_inter += float((a_pred & a_truth)[has].sum())
        a_union += float((a_pred | a_truth)[has].sum())
        detect_hits += int(((out["artifact_map"].flatten(1).amax(1) > 0) == has).sum())
        family_hits += int((out["family"].argmax(1) == batch["family"])[has].sum())
        artifact_pairs += int(has.sum())
        n += len(has)
    model.train()
    return {
        "changed_mask_iou": inter / max(union, 1.0), "artifact_map_iou": a_inter / max(a_union, 1.0),
        "artifact_detection_accuracy": detect_hits / max(n, 1), "family_accuracy": family_hits / max(artifact_pairs, 1),
        "pairs": n, "artifact_pairs": artifact_pairs,
    }


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


class Pretrainer:
    """Set-up (run folder, model, heads, optimiser, resume), `train_step`, `train`: the same run-folder policy as
    `Distiller` (``--resume`` continues from ``OUT/checkpoint``, ``--overwrite`` replaces a run)."""

    def __init__(self, cfg: PretrainConfig, student_config: StudentConfig):
        from spatialreward.student.run_folder import RunFolder

        self.cfg = cfg
        if not cfg.resume:
            PretrainHeads(student_config)  # refuses a student without a quality map before any folder is made
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.run = RunFolder(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite, is_main=True)
        self.out = self.run.out
        self.run.prepare()
        state = None
        resume_dir = self.run.checkpoint_to_resume()
        if resume_dir is not None:
            state = ckpt.load_training_checkpoint(resume_dir)
            student_config = StudentConfig.from_dict(state["student_config"])
        torch.manual_seed(cfg.seed)
        self.model = Student(student_config)
        self.heads = PretrainHeads(student_config)
        self.recipe, self.heldout_photos = training_recipe()
        params = list(self.model.parameters()) + list(self.heads.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step, self.elapsed = 0, 0.0
        if state is not None:
            model_state = state["model_state"]
            self.model.load_state_dict({k[8:]: v for k, v in model_state.items() if k.startswith("student.")})
            self.heads.load_state_dict({k[6:]: v for k, v in model_state.items() if k.startswith("heads.")})
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.step = int(state["trainer_state"]["step"])
            self.elapsed = float(state["trainer_state"]["elapsed_seconds"])
        self.model.train()

    def lr_at(self, step: int) -> float:
        total = self.cfg.max_steps or max(step + 1, 1000)
        if step < self.cfg.warmup_steps:
            return self.cfg.lr * (step + 1) / self.cfg.warmup_steps
        progress = min(1.0, (step - self.cfg.warmup_steps) / max(1, total - self.cfg.warmup_steps))
        return self.cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_step(self, batch: dict) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        out = pretrain_outputs(self.model, self.heads, batch["source"], batch["edited"])
        loss, parts = pretrain_loss(out, batch, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.model.parameters()) + list(self.heads.parameters()), 1.0)
        self.optimizer.step()
        self.step += 1
        return {"loss": float(loss.detach()), **parts}

    def save(self) -> None:
        state = {**{f"student.{k}": v for k, v in self.model.state_dict().items()},
                 **{f"heads.{k}": v for k, v in self.heads.state_dict().items()}}
        ckpt.save_training_checkpoint(
            self.out, model_state=state, student_config=asdict(self.model.cfg),
            optimizer_state=self.optimizer.state_dict(),
            trainer_state={"step": self.step, "elapsed_seconds": self.elapsed, "config": asdict(self.cfg)},
        )

    def done(self) -> bool:
        return ((self.cfg.max_steps is not None and self.step >= self.cfg.max_steps)
                or (self.cfg.max_minutes is not None and self.elapsed >= 60 * self.cfg.max_minutes))

    def validation_batches(self) -> list[dict]:
        """Fixed pairs from the held-out photos (same seed every run): the number that says the detectors carry
        over to photos pretraining never saw."""
        recipe = SplitRecipe(self.heldout_photos, failures=self.recipe.failures)
        rng = np.random.default_rng([self.cfg.seed, 999])
        size, bs = self.model.cfg.input_size, self.cfg.batch_size
        pairs = [make_pair(rng, recipe, size, content_p=self.cfg.content_p, artifact_p=self.cfg.artifact_p)
                 for _ in range(self.cfg.validation_pairs)]
        return [collate_pairs(pairs[i:i + bs], self.model.cfg) for i in range(0, len(pairs), bs)]

    def train(self) -> Path:
        from rich.progress import Progress

        stream = PairStream(self.cfg, self.model.cfg, self.recipe, start_step=self.step)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.cfg.loader_workers,
                                             persistent_workers=False)
        self.out.mkdir(parents=True, exist_ok=True)
        log = (self.out / "metrics.jsonl").open("a")
        last_save = time.monotonic()
        total = self.cfg.max_steps
        with Progress(disable=not self.cfg.progress) as bar:
            task = bar.add_task("pretrain", total=total)
            bar.update(task, completed=self.step)
            for batch in loader:
                if self.done():
                    break
                t0 = time.monotonic()
                parts = self.train_step(batch)
                self.elapsed += time.monotonic() - t0
                bar.update(task, completed=self.step, description=f"pretrain loss {parts['loss']:.3f}")
                if self.step % 10 == 0:
                    log.write(json.dumps({"step": self.step, "elapsed_seconds": round(self.elapsed, 1), **parts}) + "\n")
                    log.flush()
                if time.monotonic() - last_save > 60 * self.cfg.save_every_minutes:
                    self.save()
                    last_save = time.monotonic()
        log.close()
        self.save()
        report = {"step": self.step, "elapsed_seconds": round(self.elapsed, 1), "config": asdict(self.cfg),
                  "heldout_photos": list(self.heldout_photos),
                  "validation": validate(self.model, self.heads, self.validation_batches())}
        ckpt.atomic_write_json(self.out / "pretrain.json", report)
        self.model.eval().save_pretrained(self.out)
        return self.out
