"""Files the student writes and reads: the student folder, resumable training checkpoints, backbone weights.

The folder format lives here and only here; `Student.save_pretrained` / `from_pretrained` call into this module.

Student folder (what `save_pretrained` writes and `spatialreward eval` / `RewardModel` read)::

    model.safetensors    the weights (safetensors only: loading them runs no code)
    config.json          {"format", "format_version", "student": StudentConfig fields, "weights_sha256"}

Weights and config are one unit. A new folder is built beside its destination and renamed into place (one atomic
rename). When the folder already exists (a distill ``OUT`` also holds the checkpoint and logs) the two files are
replaced one after the other, and ``config.json`` carries the sha256 of the weights it belongs to: a reader refuses
a torn pair (new weights, old config or the reverse) with an error instead of loading a mix. Every weight is
checked for NaN/inf once at load.

Training checkpoint (``OUT/checkpoint/``)::

    model.safetensors    student weights           config.json        student config (as above)
    ema.safetensors      EMA weights (if any)      trainer_state.json step, elapsed seconds, distill config
    optimizer.pt         optimizer + scheduler state (tensors and plain containers only)

It is built in a temp folder (every file fsynced, ``trainer_state.json`` last, so its presence marks a whole
checkpoint), then swapped in with two renames, ``checkpoint/ → .checkpoint.old.PID`` and ``tmp → checkpoint/``,
with the directory fsynced after each. A crash between the renames leaves no ``checkpoint/`` but two whole
folders: `find_checkpoint` recovers the newest whole one (the old folder at worst) before a resume. The optimizer
state is the one file we `torch.load`, with ``weights_only=True``, and only from checkpoints this code wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from spatialreward.dataset import atomic_write_bytes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "spatialreward-student"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
EMA_FILE = "ema.safetensors"
# Leftovers of a checkpoint swap: the new folder being built, and the previous one between the two renames.
NEW_PREFIX = ".checkpoint.new."
OLD_PREFIX = ".checkpoint.old."


class CheckpointError(ValueError):
    """A student folder or checkpoint that cannot be used as it is (torn, non-finite, not ours)."""


# ---------------------------------------------------------------------------------------------------------------
# Small file helpers
# ---------------------------------------------------------------------------------------------------------------


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in ``path`` durable (a rename is only on disk once its directory is)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}  # shared storage broken
    return save(tensors)


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> str:
    """Save a state dict as safetensors atomically; returns the file's sha256."""
    data = _safetensors_bytes(state)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_finite(state: dict[str, torch.Tensor], *, source: str) -> None:
    """Refuse weights holding NaN or inf, naming the tensors (a model with them scores every edit NaN)."""
    bad = [k for k, v in state.items() if v.dtype.is_floating_point and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold NaN or inf ({', '.join(bad[:8])}{' …' if len(bad) > 8 else ''}); "
            "the weights are damaged or come from a diverged run: load an earlier checkpoint"
        )


def load_safetensors_checked(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict, checked for finite values once here."""
    from safetensors.torch import load_file

    state = load_file(str(path), device=str(device))
    check_finite(state, source=str(path))
    return state


# ---------------------------------------------------------------------------------------------------------------
# The student folder
# ---------------------------------------------------------------------------------------------------------------


def student_meta(student_config: dict, weights_sha256: str) -> dict[str, Any]:
    """The ``config.json`` of a student folder (and of a checkpoint): format tag, config, hash of its weights."""
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "student": student_config,
        "weights_sha256": weights_sha256,
    }


def write_student_folder(directory: str | Path, state: dict[str, torch.Tensor], student_config: dict) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory`` as one unit (see the module docstring)."""
    directory = Path(directory)
    data = _safetensors_bytes(state)
    meta = student_meta(student_config, hashlib.sha256(data).hexdigest())
    if directory.exists():
        # Weights first, then the config that names their hash: until the config lands, readers see a pair that
        # does not match and refuse it; they never load new weights under an old config as if it were whole.
        atomic_write_bytes(directory / WEIGHTS_FILE, data)
        atomic_write_json(directory / CONFIG_FILE, meta)
        fsync_dir(directory)
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        atomic_write_bytes(tmp / WEIGHTS_FILE, data)
        atomic_write_json(tmp / CONFIG_FILE, meta)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a model folder reads like any other folder
        fsync_dir(tmp)
        os.replace(tmp, directory)  # one rename: the folder appears whole or not at all
        fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_student_folder(directory: str | Path, device: str = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """``(StudentConfig fields, state dict)`` of a folder written by `write_student_folder`, checked: format tag,
    the weights' hash against the config (when recorded), finite values."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (is {directory} a student directory from `distill`?)")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{config_path}: format {meta.get('format')!r} is not {FORMAT_NAME!r}")
    expected = meta.get("weights_sha256")  # folders written before the hash was recorded have none
    if expected is not None:
        actual = file_sha256(weights_path)
        if actual != expected:
            raise CheckpointError(
                f"{weights_path} (sha256 {actual[:12]}…) is not the weights {config_path} was saved with "
                f"({expected[:12]}…): the two files come from different saves (an interrupted save?); save the "
                "model again, or rerun `spatialreward distill --resume` on its run folder"
            )
    return meta["student"], load_safetensors_checked(weights_path, device)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------------------------


def save_training_checkpoint(
    out_dir: Path,
    *,
    model_state: dict[str, torch.Tensor],
    student_config: dict,
    optimizer_state: dict,
    trainer_state: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``out_dir/checkpoint/`` as a whole: build it in a temp folder, then swap it in (crash-safe)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / CHECKPOINT_DIR
    tmp = Path(tempfile.mkdtemp(prefix=NEW_PREFIX, dir=out_dir))
    old = out_dir / f"{OLD_PREFIX}{os.getpid()}"
    try:
        sha = save_safetensors(model_state, tmp / WEIGHTS_FILE)
        atomic_write_json(tmp / CONFIG_FILE, student_meta(student_config, sha))
        if ema_state is not None:
            save_safetensors(ema_state, tmp / EMA_FILE)
        buf = tmp / f".{OPTIMIZER_FILE}.tmp"
        torch.save(optimizer_state, buf)
        _fsync_file(buf)
        os.replace(buf, tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / TRAINER_STATE_FILE, trainer_state)  # last: its presence marks a whole checkpoint
        fsync_dir(tmp)
        if final.exists():
            os.replace(final, old)  # a crash from here until the next rename is what `find_checkpoint` repairs
            fsync_dir(out_dir)
        os.replace(tmp, final)
        fsync_dir(out_dir)
    except BaseException:
        if not final.exists() and old.is_dir():
            os.replace(old, final)  # put the previous checkpoint back (a hard crash leaves this to find_checkpoint)
            fsync_dir(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    remove_swap_leftovers(out_dir)
    return final


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def is_whole_checkpoint(ckpt_dir: Path) -> bool:
    """Every required file is there and the trainer state (written last) parses."""
    required = (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE)
    if not all((ckpt_dir / name).is_file() for name in required):
        return False
    try:
        int(json.loads((ckpt_dir / TRAINER_STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def swap_leftovers(out_dir: Path) -> list[Path]:
    """Folders a checkpoint swap leaves behind when it is interrupted (see the module docstring)."""
    return sorted(p for p in out_dir.glob(".checkpoint.*") if p.is_dir() and p.name.startswith((NEW_PREFIX, OLD_PREFIX)))


def remove_swap_leftovers(out_dir: Path) -> None:
    """Remove swap leftovers of earlier crashed saves (the live ``checkpoint/`` is whole at this point)."""
    for path in swap_leftovers(out_dir):
        shutil.rmtree(path, ignore_errors=True)


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """``out_dir/checkpoint`` if there is one to resume from, recovering it first when a crash hit a swap.

    With no ``checkpoint/`` but whole swap leftovers (``.checkpoint.old.PID`` and/or a finished
    ``.checkpoint.new.*``), the one with the highest step is renamed to ``checkpoint/`` (the old folder on a tie).
    Returns ``None`` when there is nothing whole to resume from.
    """
    out_dir = Path(out_dir)
    final = out_dir / CHECKPOINT_DIR
    if final.is_dir():
        return final
    if not out_dir.is_dir():
        return None
    candidates = []
    for path in swap_leftovers(out_dir):
        if is_whole_checkpoint(path):
            step = int(json.loads((path / TRAINER_STATE_FILE).read_text())["step"])
            candidates.append((step, path.name.startswith(OLD_PREFIX), path))
    if not candidates:
        return None
    _, _, best = max(candidates)
    os.replace(best, final)
    fsync_dir(out_dir)
    return final


def load_training_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Read a checkpoint folder written by `save_training_checkpoint` (weights checked as `read_student_folder`)."""
    ckpt_dir = Path(ckpt_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE):
        if not (ckpt_dir / name).is_file():
            raise FileNotFoundError(f"{ckpt_dir / name}: missing; the checkpoint is incomplete")
    student_config, model_state = read_student_folder(ckpt_dir)
    ema_path = ckpt_dir / EMA_FILE
    return {
        "model_state": model_state,
        "student_config": student_config,
        # Our own file: optimizer moments and step counters only (weights_only refuses arbitrary objects).
        "optimizer_state": torch.load(ckpt_dir / OPTIMIZER_FILE, weights_only=True, map_location="cpu"),
        "trainer_state": json.loads((ckpt_dir / TRAINER_STATE_FILE).read_text()),
        "ema_state": load_safetensors_checked(ema_path) if ema_path.is_file() else None,
    }


# ---------------------------------------------------------------------------------------------------------------
# Backbone weights
# ---------------------------------------------------------------------------------------------------------------


def read_backbone_state(source: str | Path) -> dict[str, torch.Tensor]:
    """ViT weights from a ``.safetensors`` file or, with hub access, a timm model name."""
    path = Path(source)
    if path.exists():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path}: only .safetensors backbone files are read (pickled .pth/.bin files can run code); "
                "convert with `safetensors.torch.save_file(torch.load(f, weights_only=True), 'vit.safetensors')`"
            )
        return load_safetensors_checked(path)
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
    state = vit.state_dict()
    check_finite(state, source=str(source))
    return state
