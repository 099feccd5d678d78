"""What a distillation run shows while it trains and leaves behind: periodic held-out evaluation, the progress
bar, the end-of-run line and ``curves.png``.

All of it is monitoring: the distiller never selects weights on these numbers (the final weights are the last
ones). Only rank 0 evaluates and draws; other ranks get a monitor with nothing to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spatialreward.student.data import EditData


class TrainingMonitor:
    """Evaluates on ``eval_data`` when due, keeps the last metrics, drives a rich progress bar.

    Due: every ``eval_every_steps`` steps when set, else every ``eval_every_minutes`` of training time (0 = never).
    """

    def __init__(
        self,
        eval_data: EditData | None,
        *,
        device: torch.device,
        eval_every_steps: int | None,
        eval_every_minutes: float,
        progress: bool,
    ):
        self.eval_data = eval_data
        self.device = device
        self.eval_every_steps = eval_every_steps
        self.eval_every_minutes = eval_every_minutes
        self.show_progress = progress
        self.last_eval: dict[str, Any] | None = None
        self.last_eval_elapsed = 0.0
        self._bar = None
        self._task = None

    # -- evaluation -------------------------------------------------------------------------------------------------

    def evaluate(self, model) -> dict[str, Any] | None:
        if self.eval_data is None:
            return None
        from spatialreward.student.evaluate import evaluate_data

        metrics, _ = evaluate_data(model, self.eval_data, device=self.device)
        self.last_eval = metrics
        return metrics

    def eval_due(self, step: int, elapsed: float) -> bool:
        if self.eval_data is None:
            return False
        if self.eval_every_steps:
            return step % self.eval_every_steps == 0
        return bool(self.eval_every_minutes) and elapsed - self.last_eval_elapsed >= 60.0 * self.eval_every_minutes

    # -- progress bar -----------------------------------------------------------------------------------------------

    def start(self, step: int, elapsed: float) -> None:
        self.last_eval_elapsed = elapsed
        if not self.show_progress:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]distill[/bold] step {task.fields[step]}"), BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"), TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.0f} edits/s"), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
        )
        self._bar.start()
        self._task = self._bar.add_task("distill", total=1000, step=step, loss=float("nan"), rate=0.0, note="")

    def update(self, **fields: Any) -> None:
        """``completed`` (a fraction of the budget), ``step``, ``loss``, ``rate`` or ``metrics`` (an eval's)."""
        if self._bar is None:
            return
        if "completed" in fields:
            fields["completed"] = int(1000 * min(1.0, fields["completed"]))
        if "metrics" in fields:
            fields["note"] = eval_note(fields.pop("metrics"))
        self._bar.update(self._task, **fields)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as ``{"a/b": v}`` (the ``eval/...`` keys of ``metrics.jsonl``)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def eval_note(m: dict[str, Any] | None) -> str:
    """One line of the headline metrics; mask IoU twice: over all edits (both empty = 1) and edits with boxes."""
    if not m:
        return ""

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    return (f"pair-acc {f(m.get('pairwise_accuracy'))} spearman {f(m.get('spearman'))} "
            f"adv-corr {f(m.get('group_advantage_corr'))} IoU {f(m.get('mask_iou'))} "
            f"(edited only {f(m.get('mask_iou_edited_only'))})")


def plot_training_curves(metrics_log: str | Path, out_png: str | Path, *, title: str = "") -> Path:
    """Training loss parts and periodic held-out metrics from ``metrics.jsonl`` against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_log).read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss/total" in r]
    evals = [r for r in records if "eval/pairwise_accuracy" in r]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for key in sorted({k for r in train for k in r if k.startswith("loss/")}):
        xs = [r["elapsed_s"] / 60 for r in train if key in r]
        ys = [r[key] for r in train if key in r]
        if len(ys) > 20:  # light smoothing: per-step losses of 8 groups are noisy
            k = max(1, len(ys) // 50)
            ys = np.convolve(ys, np.ones(k) / k, mode="same").tolist()
        ax.plot(xs, ys, label=key[5:], lw=1.2 if key == "loss/total" else 0.8)
    ax.set_xlabel("training minutes")
    ax.set_ylabel("loss")
    ax.set_title("training losses")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    names = {"eval/pairwise_accuracy": "pairwise acc", "eval/spearman": "Spearman",
             "eval/group_advantage_corr": "group-adv corr", "eval/mask_iou": "mask IoU",
             "eval/mask_iou_edited_only": "mask IoU (edited only)", "eval/presence_accuracy": "presence acc"}
    for key, label in names.items():
        pts = [(r["elapsed_s"] / 60, r[key]) for r in evals if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax.axhline(0.9, color="k", ls=":", lw=0.8)
    ax.axhline(0.6, color="grey", ls=":", lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training minutes")
    ax.set_title("held-out metrics (targets: 0.90; mask IoU 0.60)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
