"""Files the student writes and reads: safetensors weights, JSON configs, resumable training checkpoints.

Every write is atomic (temp file or temp folder + ``os.replace``), so a run killed mid-save leaves the previous
checkpoint intact. Weights are safetensors only; the optimizer state is the one file we `torch.load`, with
``weights_only=True``, and only from checkpoints this code wrote.

Checkpoint layout (``OUT/checkpoint/``)::

    model.safetensors    student weights           config.json        student config (as save_pretrained)
    ema.safetensors      EMA weights (if any)      trainer_state.json step, elapsed seconds, distill config
    optimizer.pt         optimizer + scheduler state (tensors and plain containers only)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from spatialreward.dataset import atomic_write_bytes

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
EMA_FILE = "ema.safetensors"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a state dict as safetensors atomically (tensors made contiguous, shared storage broken)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    atomic_write_bytes(Path(path), save(tensors))


def read_backbone_state(source: str | Path) -> dict[str, torch.Tensor]:
    """ViT weights from a ``.safetensors`` file or, with hub access, a timm model name."""
    path = Path(source)
    if path.exists():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path}: only .safetensors backbone files are read (pickled .pth/.bin files can run code); "
                "convert with `safetensors.torch.save_file(torch.load(f, weights_only=True), 'vit.safetensors')`"
            )
        from safetensors.torch import load_file

        return load_file(str(path))
    if any(sep in str(source) for sep in ("/", "\\")) or str(source).endswith(".safetensors"):
        raise FileNotFoundError(f"{source}: backbone weights file does not exist")
    import timm

    if str(source) not in timm.list_models(pretrained=True):
        raise ValueError(f"{source!r} is neither a file nor a timm model name with pretrained weights")
    try:
        vit = timm.create_model(str(source), pretrained=True, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise RuntimeError(
            f"could not fetch timm weights {source!r} ({type(exc).__name__}: {exc}); without hub access, save "
            "them on a machine that has it (`timm.create_model(name, pretrained=True)` + safetensors) and pass the file"
        ) from exc
    return vit.state_dict()


def save_training_checkpoint(
    out_dir: Path,
    *,
    model_state: dict[str, torch.Tensor],
    student_config: dict,
    optimizer_state: dict,
    trainer_state: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``out_dir/checkpoint/`` as a whole: build it in a temp folder, then swap it in."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / CHECKPOINT_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=out_dir))
    try:
        from spatialreward.student.model import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE

        save_safetensors(model_state, tmp / WEIGHTS_FILE)
        atomic_write_json(
            tmp / CONFIG_FILE, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "student": student_config}
        )
        if ema_state is not None:
            save_safetensors(ema_state, tmp / EMA_FILE)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / TRAINER_STATE_FILE, trainer_state)
        old = out_dir / f".checkpoint.old.{os.getpid()}"
        if final.exists():
            os.replace(final, old)  # two renames: a crash in between leaves `old` and `tmp`, both whole
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_training_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Read a checkpoint folder written by `save_training_checkpoint`."""
    from safetensors.torch import load_file

    from spatialreward.student.model import CONFIG_FILE, WEIGHTS_FILE

    ckpt_dir = Path(ckpt_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE):
        if not (ckpt_dir / name).is_file():
            raise FileNotFoundError(f"{ckpt_dir / name}: missing; the checkpoint is incomplete")
    out = {
        "model_state": load_file(str(ckpt_dir / WEIGHTS_FILE)),
        "student_config": json.loads((ckpt_dir / CONFIG_FILE).read_text())["student"],
        # Our own file: optimizer moments and step counters only (weights_only refuses arbitrary objects).
        "optimizer_state": torch.load(ckpt_dir / OPTIMIZER_FILE, weights_only=True, map_location="cpu"),
        "trainer_state": json.loads((ckpt_dir / TRAINER_STATE_FILE).read_text()),
        "ema_state": load_file(str(ckpt_dir / EMA_FILE)) if (ckpt_dir / EMA_FILE).is_file() else None,
    }
    return out
