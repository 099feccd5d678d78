"""Run a student over a preloaded split and report how well it stands in for the teacher.

`predict` batches whole groups through the model; `evaluate_data` turns predictions into the metrics of
`spatialreward.student.metrics`; `write_report` writes ``metrics.json``, ``metrics.md`` (a table) and
``eval.png`` (student vs teacher reward scatter + a few mask overlays). `evaluate_model_dir` is what
``spatialreward eval`` calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spatialreward.boxes import boxes_to_mask
from spatialreward.student.data import EditData, GroupBatchSampler
from spatialreward.student.metrics import reward_metrics
from spatialreward.student.model import subscore_std_points
from spatialreward.types import BOX_SCALE, SUBSCORE_NAMES


@dataclass
class Predictions:
    """Per-edit student outputs in data order: rewards ``[E]``, sub-scores ``[E, 4]``, presence probability
    ``[E]``, boolean masks ``[E, S, S]`` at the model's input side (logits upsampled, threshold 0), novelty
    ``[E, V]`` per view when the student has a novelty fit."""

    reward: np.ndarray
    subscores: np.ndarray
    uncertainty: np.ndarray
    presence: np.ndarray
    masks: np.ndarray
    novelty: np.ndarray | None = None


@torch.no_grad()
def predict(model, data: EditData, *, device: torch.device | str = "cpu", groups_per_batch: int = 16) -> Predictions:
    model.eval()
    device = torch.device(device)
    side = model.cfg.img_size
    n = len(data)
    reward = np.zeros(n, np.float64)
    subscores = np.zeros((n, 4), np.float64)
    uncertainty = np.zeros((n, 4), np.float64)
    presence = np.zeros(n, np.float64)
    masks = np.zeros((n, side, side), bool)
    novelty = (np.zeros((n, len(model.novelty.views)), np.float64) if getattr(model, "novelty", None) is not None
               else None)
    sampler = GroupBatchSampler(data.group, groups_per_batch, shuffle=False, drop_last=False)
    for indices in sampler.epoch_batches(0):
        batch = data.collate(indices)
        out = model(batch["source"].to(device), batch["edited"].to(device), batch["text"].to(device),
                    source_index=batch["source_index"].to(device))
        ix = np.asarray(indices)
        reward[ix] = out.reward.float().cpu().numpy()
        subscores[ix] = out.subscores.float().cpu().numpy()
        uncertainty[ix] = subscore_std_points(out.subscore_logvar.float()).cpu().numpy()
        presence[ix] = torch.sigmoid(out.presence_logit.float()).cpu().numpy()
        up = F.interpolate(out.edit_mask_logits.float().unsqueeze(1), size=(side, side), mode="bilinear",
                           align_corners=False)[:, 0]
        masks[ix] = (up > 0).cpu().numpy()
        if novelty is not None:
            novelty[ix] = out.novelty.float().cpu().numpy()
    model.train()
    return Predictions(reward, subscores, uncertainty, presence, masks, novelty)


def evaluate_data(model, data: EditData, *, device: torch.device | str = "cpu") -> tuple[dict[str, Any], Predictions]:
    """All metrics of ``model`` on ``data`` (teacher labels are the reference) and the raw predictions."""
    preds = predict(model, data, device=device)
    side = model.cfg.img_size
    target_masks = np.stack([boxes_to_mask(j.boxes, side, side) for j in data.judgements])
    metrics = reward_metrics(
        preds.reward, data.reward.numpy(), [s.group_id for s in data.samples],
        pred_subscores=preds.subscores, target_subscores=data.subscores.numpy(),
        pred_masks=preds.masks, target_masks=target_masks,
        pred_presence=preds.presence, target_presence=data.presence.numpy(),
    )
    return metrics, preds


# -- reports ------------------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def metrics_markdown(metrics: dict[str, Any], title: str) -> str:
    rows = [
        ("within-group pairwise accuracy", metrics.get("pairwise_accuracy"), f"{metrics.get('pairs')} pairs"),
        ("reward Spearman", metrics.get("spearman"), f"{metrics.get('edits')} edits"),
        ("reward Kendall (tau-b)", metrics.get("kendall"), ""),
        ("group-advantage correlation", metrics.get("group_advantage_corr"),
         f"{metrics.get('groups_for_advantage')} groups ({metrics.get('groups_skipped_for_advantage')} skipped)"),
        ("reward MAE", metrics.get("reward_mae"), "0–1 scale"),
    ]
    for name in SUBSCORE_NAMES:
        rows.append((f"MAE {name}", (metrics.get("subscore_mae") or {}).get(name), "0–25 points"))
    rows += [
        ("mask IoU (all edits)", metrics.get("mask_iou"),
         f"{metrics.get('edits')} edits; {metrics.get('mask_edits_without_boxes')} without boxes count 1 if "
         "predicted empty"),
        ("mask IoU (edited only)", metrics.get("mask_iou_edited_only"),
         f"{metrics.get('mask_edits_with_boxes')} edits the teacher boxed"),
        ("presence accuracy", metrics.get("presence_accuracy"), ""),
    ]
    lines = [f"### {title}", "", "| metric | value | over |", "|---|---:|---|"]
    lines += [f"| {name} | {_fmt(value)} | {note} |" for name, value, note in rows]
    return "\n".join(lines) + "\n"


def write_report(
    metrics: dict[str, Any], preds: Predictions, data: EditData, out_dir: str | Path, *, title: str, overlays: int = 6
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``eval.png`` into ``out_dir``."""
    from spatialreward.dataset import atomic_write_bytes
    from spatialreward.student.checkpoint import atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "metrics.md", "png": out_dir / "eval.png"}
    atomic_write_json(paths["json"], {"title": title, **metrics, "data": data.report.to_dict()})
    atomic_write_bytes(paths["markdown"], metrics_markdown(metrics, title).encode())
    _plot(metrics, preds, data, paths["png"], title=title, overlays=overlays)
    return paths


def _plot(metrics, preds: Predictions, data: EditData, path: Path, *, title: str, overlays: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = data.reward.numpy()
    cols = overlays
    fig = plt.figure(figsize=(3 * cols, 6.5))
    ax = fig.add_subplot(2, 2, 1)
    ax.scatter(teacher, preds.reward, s=6, alpha=0.5)
    lo, hi = float(min(teacher.min(), preds.reward.min())), float(max(teacher.max(), preds.reward.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("teacher reward")
    ax.set_ylabel("student reward")
    ax.set_title(f"Spearman {_fmt(metrics.get('spearman'))}, pair-acc {_fmt(metrics.get('pairwise_accuracy'))}")
    ax = fig.add_subplot(2, 2, 2)
    # within-group advantages: what GRPO actually consumes
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(data.group.tolist()):
        groups.setdefault(g, []).append(i)
    za, zs = [], []
    for ix in groups.values():
        if len(ix) < 2 or np.std(teacher[ix]) == 0:
            continue
        t, s = teacher[ix], preds.reward[ix]
        za.extend((t - t.mean()) / t.std())
        zs.extend((s - s.mean()) / (s.std() + 1e-12))
    ax.scatter(za, zs, s=6, alpha=0.5, color="tab:orange")
    ax.set_xlabel("teacher advantage (z in group)")
    ax.set_ylabel("student advantage")
    ax.set_title(f"group-advantage corr {_fmt(metrics.get('group_advantage_corr'))}")
    # mask overlays: a spread of edits with boxes
    with_boxes = [i for i, j in enumerate(data.judgements) if j.boxes]
    picks = with_boxes[:: max(1, len(with_boxes) // cols)][:cols] if with_boxes else list(range(min(cols, len(data))))
    side = preds.masks.shape[-1]
    for k, i in enumerate(picks):
        ax = fig.add_subplot(2, cols, cols + k + 1)
        img = data.images[data.edited_index[i]].permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        ax.imshow(img)
        ax.imshow(np.ma.masked_where(~preds.masks[i], preds.masks[i]), alpha=0.45, cmap="autumn")
        for x1, y1, x2, y2 in data.judgements[i].boxes:
            s = side / BOX_SCALE
            ax.add_patch(plt.Rectangle((x1 * s, y1 * s), (x2 - x1) * s, (y2 - y1) * s, fill=False, ec="lime", lw=1.2))
        ax.set_title(f"T {teacher[i]:.2f} / S {preds.reward[i]:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title} — green: teacher boxes, orange: student mask")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_model_dir(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    split: str | None = "heldout",
    teacher: str = "oracle",
    out_dir: str | Path | None = None,
    device: str = "cpu",
    max_groups: int | None = None,
    text_encoder=None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Load a student directory, evaluate it on ``split`` of ``data_dir``, write the report (default
    ``MODEL_DIR/eval-<split>``)."""
    from spatialreward.student.data import load_split, mask_target_size
    from spatialreward.student.model import Student
    from spatialreward.student.text import text_encoder_for

    model = Student.from_pretrained(model_dir, map_location=device).to(device)
    data = load_split(
        data_dir, split=split, teacher=teacher, img_size=model.cfg.input_size,
        mask_size=mask_target_size(model.cfg.grid), text_encoder=text_encoder_for(model.cfg, text_encoder),
        max_groups=max_groups, progress=progress,
    )
    metrics, preds = evaluate_data(model, data, device=device)
    out_dir = Path(out_dir) if out_dir else Path(model_dir) / f"eval-{split or 'all'}"
    title = f"{Path(model_dir).name} on {Path(data_dir).name}/{split or 'all'} (teacher {teacher})"
    paths = write_report(metrics, preds, data, out_dir, title=title)
    return metrics, paths


def load_metrics(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
