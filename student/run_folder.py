"""The checkpoint policy of a distillation run: what its folder holds, when it saves, how a rerun starts.

The file formats are in `checkpoint.py`; this module decides what to do with them.

* **Start.** A fresh run refuses a folder that already holds a run (a checkpoint, weights, a metrics log) unless
  ``overwrite``; ``resume`` continues ``OUT/checkpoint`` (recovering one that a crash left mid-swap); with both,
  it resumes when there is a checkpoint and starts over otherwise, so a script (``make demo``) can be rerun.
* **Save.** Every ``save_every_minutes`` of training time, every ``save_every_steps`` steps when set, and at the
  end. Only rank 0 writes.
* **Log.** ``metrics.jsonl`` and TensorBoard. On resume, records past the checkpoint's step (work the checkpoint
  does not hold, which the resumed run redoes) and the previous run's final records are dropped, so no step is
  logged twice; TensorBoard purges the same steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from spatialreward.dataset import atomic_write_bytes
from spatialreward.student import checkpoint as ckpt

DISTILL_CONFIG_FILE = "distill_config.json"
DATA_REPORT_FILE = "data_report.json"
METRICS_LOG = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
# What `--overwrite` removes: only what a run writes, never other files a user keeps in the folder.
RUN_FILES = (ckpt.WEIGHTS_FILE, ckpt.CONFIG_FILE, METRICS_LOG, DISTILL_CONFIG_FILE, DATA_REPORT_FILE, CURVES_FILE)


class RunFolder:
    """``OUT`` of one distillation run (see the module docstring). ``is_main``: this process writes."""

    def __init__(self, out: str | Path, *, resume: bool, overwrite: bool, is_main: bool = True):
        if not str(out):
            raise ValueError("DistillConfig.out is empty; pass an output folder (--out runs/nano)")
        self.out = Path(out)
        self.resume, self.overwrite, self.is_main = resume, overwrite, is_main
        self.resumed_step: int | None = None
        self.last_save_elapsed = 0.0
        self.writer = None

    # -- start ------------------------------------------------------------------------------------------------------

    def run_artifacts(self) -> list[str]:
        """Names in ``OUT`` that a run wrote (empty for a new or unrelated folder)."""
        if not self.out.is_dir():
            return []
        names = [n for n in (*RUN_FILES, ckpt.CHECKPOINT_DIR, TENSORBOARD_DIR) if (self.out / n).exists()]
        names += [p.name for p in ckpt.swap_leftovers(self.out)]
        names += [p.name for p in sorted(self.out.glob("eval-*")) if (p / "metrics.json").is_file()]
        return names

    def prepare(self) -> Path | None:
        """Rank 0's part of the start: recover or clear as the flags say. Returns the checkpoint to resume from."""
        found = ckpt.find_checkpoint(self.out) if self.resume else None
        if found is not None:
            return found
        if self.resume and not self.overwrite:
            raise FileNotFoundError(
                f"{self.out / ckpt.CHECKPOINT_DIR}: nothing to resume from (drop --resume to start fresh, or add "
                "--overwrite to start over whatever the folder holds)"
            )
        existing = self.run_artifacts()
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{self.out} already holds a run ({', '.join(existing)}); pass --resume to continue it, --overwrite "
                "to replace it, or choose another --out"
            )
        for name in existing:
            path = self.out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return None

    def checkpoint_to_resume(self) -> Path | None:
        """Any rank, after rank 0 ran `prepare`: the checkpoint every process loads, or None for a fresh run."""
        final = self.out / ckpt.CHECKPOINT_DIR
        return final if self.resume and final.is_dir() else None

    # -- save schedule ----------------------------------------------------------------------------------------------

    def save_due(self, step: int, elapsed: float, *, every_minutes: float, every_steps: int | None) -> bool:
        due = elapsed - self.last_save_elapsed >= 60.0 * every_minutes
        if every_steps:
            due = due or step % every_steps == 0
        return due

    def save(self, elapsed: float, **state: Any) -> None:
        """Write the training checkpoint (rank 0) and restart the save clock."""
        self.last_save_elapsed = elapsed
        if self.is_main:
            ckpt.save_training_checkpoint(self.out, **state)

    # -- logs -------------------------------------------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            ckpt.atomic_write_json(self.out / name, obj)

    def open_log(self, *, tensorboard: bool, warn=print) -> None:
        """Start logging (rank 0): trim ``metrics.jsonl`` to the resumed step, open TensorBoard if asked."""
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resumed_step is not None:
            trim_metrics_log(self.out / METRICS_LOG, self.resumed_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warn("[yellow]tensorboard is not installed; scalars go to metrics.jsonl only[/yellow]")
            else:
                purge = None if self.resumed_step is None else self.resumed_step + 1
                self.writer = SummaryWriter(str(self.out / TENSORBOARD_DIR), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.out / METRICS_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and v is not None and k not in ("step",):
                    self.writer.add_scalar(k, v, record["step"])

    def close_log(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def trim_metrics_log(path: Path, step: int) -> int:
    """Keep the records of ``path`` up to ``step`` that are not final ones (a torn last line goes too); returns
    how many records were dropped. Rewritten atomically."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            keep = int(record["step"]) <= step and not record.get("final")
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
    return dropped
