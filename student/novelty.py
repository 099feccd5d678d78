"""Is this edit like the ones the student learned from? A density check on the student's own features.

The predicted sub-score std is calibrated on operations the student trained on and *confidently wrong* on one it
never saw (README, issue 16: texture held out, its error the largest and its std average). An RL policy walks off
the training distribution, so the reward must say when it is guessing.

Up to three views, each a Gaussian (Ledoit-Wolf covariance) fitted over training edits, each scored by its
Mahalanobis distance:

    instruction   the projected instruction embedding [C]: an instruction unlike any the student was taught
    evidence      the score head's first hidden layer [H]: an edit whose learned evidence is unlike the training's
    pixels        the weight-free pixel-detail summary [3k] (students with pixel detail): fine-scale statistics of
                  the edited image against the source's, inside and outside the region: an unfamiliar artifact

Each distance is divided by its ``quantile`` (default 0.99) over calibration edits the fit did not see (by
default the held-out split: new photos, trained operations), so ``novelty [B, V]`` is ≤ 1 for that share of
in-distribution edits and > 1 flags. The views are small (C = 128, H = 192, 3k = 21 for `nano`), so the check is
one ``[B, D] × [D, D]`` matmul per view inside ``score.onnx``. Why these and not the whole 1,666-wide evidence
vector, or a low-rank PCA of it: `bench/fidelity/novelty_views.py` measured it (README, issue 16).

File: ``novelty.safetensors`` beside ``model.safetensors`` (tensors, plus the fit's record in the header). It
names the sha256 of the weights it was fitted on; a student folder whose weights changed since (fine-tuned,
re-saved) loads without it and logs the fix, since a stale fit would flag the wrong edits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spatialreward.types import NOVELTY_VIEWS

NOVELTY_FILE = "novelty.safetensors"
FORMAT_NAME = "spatialreward-novelty"
FORMAT_VERSION = 2  # 2: views named per detector (1: two fixed views)
VIEWS = NOVELTY_VIEWS  # canonical order; a detector holds the ones its student has

log = logging.getLogger(__name__)


class NoveltyDetector(nn.Module):
    """One feature tensor per view (`views`, in `VIEWS` order) → ``novelty [B, V]`` fp32, one column per view
    (> 1: further out than ``quantile`` of in-distribution edits).

    Per view ``v``: ``‖(x − mean_v) · whiten_v‖ / threshold_v``, where ``whiten_v whiten_vᵀ`` is the fitted
    precision matrix. Buffers are non-persistent: they live in ``novelty.safetensors``, not in the student's
    weights, so a student with or without a fit has the same ``state_dict``.
    """

    def __init__(self, dims: dict[str, int], record: dict[str, Any] | None = None):
        super().__init__()
        unknown = [v for v in dims if v not in VIEWS]
        if unknown or not dims:
            raise ValueError(f"views {list(dims)}: each must be one of {VIEWS}")
        self.views = tuple(v for v in VIEWS if v in dims)
        self.dims = {v: int(dims[v]) for v in self.views}
        for name, d in self.dims.items():
            self.register_buffer(f"{name}_mean", torch.zeros(d), persistent=False)
            self.register_buffer(f"{name}_whiten", torch.eye(d), persistent=False)
        self.register_buffer("inv_threshold", torch.ones(len(self.views)), persistent=False)
        self.record: dict[str, Any] = dict(record or {})

    def tensor_names(self) -> list[str]:
        return [f"{v}_{part}" for v in self.views for part in ("mean", "whiten")] + ["inv_threshold"]

    def distances(self, *views: torch.Tensor) -> torch.Tensor:
        """Uncalibrated Mahalanobis distances ``[B, V]``, one feature tensor per view in `views` order."""
        out = []
        for name, x in zip(self.views, views):
            mean, whiten = getattr(self, f"{name}_mean").float(), getattr(self, f"{name}_whiten").float()
            y = (x.float() - mean) @ whiten
            out.append((y * y).sum(1).sqrt())
        return torch.stack(out, dim=1)

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        return self.distances(*views) * self.inv_threshold.float()


def fit_novelty(fit: dict[str, torch.Tensor], calibration: dict[str, torch.Tensor], *, quantile: float = 0.99,
                record: dict[str, Any] | None = None) -> NoveltyDetector:
    """Fit each view's Gaussian on ``fit`` (view name → ``[N, D_v]``) and set its threshold to the ``quantile`` of
    ``calibration``'s distances (the same views, ``[M, D_v]``: in-distribution edits the fit did not see)."""
    from sklearn.covariance import LedoitWolf

    if set(fit) != set(calibration):
        raise ValueError(f"fit views {sorted(fit)} and calibration views {sorted(calibration)} differ")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile={quantile} must be in [0.5, 1)")
    det = NoveltyDetector({v: f.shape[1] for v, f in fit.items()})
    n, m = next(iter(fit.values())).shape[0], next(iter(calibration.values())).shape[0]
    if n < 50 or m < 10:
        raise ValueError(f"{n} fit and {m} calibration edits: need at least 50 and 10")
    for name in det.views:
        f, c = fit[name], calibration[name]
        if f.shape[0] != n or c.shape[0] != m or f.shape[1] != c.shape[1]:
            raise ValueError(f"view {name!r}: fit {tuple(f.shape)} and calibration {tuple(c.shape)} do not line up")
        if not (torch.isfinite(f).all() and torch.isfinite(c).all()):
            raise ValueError(f"view {name!r}: non-finite features (the student produced NaN/inf on some edit)")
    shrinkage = {}
    for name in det.views:
        lw = LedoitWolf().fit(fit[name].double().numpy())
        precision = torch.from_numpy(lw.precision_)
        precision = (precision + precision.T) / 2
        whiten = torch.linalg.cholesky(precision)  # P = L Lᵀ, so (x − μ)ᵀ P (x − μ) = ‖(x − μ) L‖²
        getattr(det, f"{name}_mean").copy_(torch.from_numpy(lw.location_).float())
        getattr(det, f"{name}_whiten").copy_(whiten.float())
        shrinkage[name] = float(lw.shrinkage_)
    calib = det.distances(*(calibration[v] for v in det.views))  # [M, V]
    thresholds = torch.quantile(calib.double(), quantile, dim=0).clamp_min(1e-12)
    det.inv_threshold.copy_((1.0 / thresholds).float())
    det.record = {**(record or {}), "views": list(det.views), "dims": dict(det.dims), "quantile": quantile,
                  "fit_edits": n, "calibration_edits": m, "shrinkage": shrinkage,
                  "threshold_distance": dict(zip(det.views, thresholds.tolist()))}
    return det


# ---------------------------------------------------------------------------------------------------------------
# The file beside the weights
# ---------------------------------------------------------------------------------------------------------------


def save_novelty(detector: NoveltyDetector, directory: str | Path) -> Path:
    """Write ``novelty.safetensors`` into a student folder, stamped with the folder's weights hash."""
    from safetensors.torch import save

    from spatialreward.dataset import atomic_write_bytes

    directory = Path(directory)
    meta = {**detector.record, "weights_sha256": _weights_sha256(directory)}
    detector.record = meta
    tensors = {name: getattr(detector, name).detach().float().cpu().contiguous() for name in detector.tensor_names()}
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "record": json.dumps(meta, sort_keys=True)}
    path = directory / NOVELTY_FILE
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def load_novelty(directory: str | Path, device: str | torch.device = "cpu") -> NoveltyDetector | None:
    """The folder's fit, or None when it has none or when it belongs to other weights (logged, with the fix)."""
    from safetensors import safe_open

    from spatialreward.student import checkpoint

    directory = Path(directory)
    path = directory / NOVELTY_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise checkpoint.CheckpointError(f"{path}: unreadable ({exc}); refit with `spatialreward novelty --model "
                                         f"{directory} --data DATA`") from exc
    if not isinstance(header, dict):
        header = {}
    if header.get("format") != FORMAT_NAME:
        raise checkpoint.CheckpointError(f"{path}: not a {FORMAT_NAME} file (format {header.get('format')!r})")
    refit = f"refit with `spatialreward novelty --model {directory} --data DATA`"
    if header.get("format_version") != str(FORMAT_VERSION):
        raise checkpoint.CheckpointError(f"{path}: format version {header.get('format_version')!r}, this package "
                                         f"reads {FORMAT_VERSION}; {refit}")
    try:
        record = json.loads(header.get("record", "{}"))
    except ValueError as exc:
        raise checkpoint.CheckpointError(f"{path}: its record is not JSON ({exc}); {refit}") from exc
    if record.get("weights_sha256") != _weights_sha256(directory):
        log.warning("%s was fitted on other weights than %s now holds; novelty is off until you refit: "
                    "spatialreward novelty --model %s --data DATA", path, checkpoint.WEIGHTS_FILE, directory)
        return None
    dims = record.get("dims")
    try:
        det = NoveltyDetector(dict(dims), record)
    except (TypeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{path}: its record names no usable views ({exc}); {refit}") from exc
    if set(tensors) != set(det.tensor_names()):
        raise checkpoint.CheckpointError(f"{path}: tensors {sorted(tensors)}, expected {det.tensor_names()}")
    checkpoint.check_finite(tensors, source=str(path))
    for name, value in tensors.items():
        buf = getattr(det, name)
        if tuple(value.shape) != tuple(buf.shape):
            raise checkpoint.CheckpointError(f"{path}: {name} is {tuple(value.shape)}, expected {tuple(buf.shape)}")
        buf.copy_(value)
    return det.to(device)


def _weights_sha256(directory: Path) -> str:
    from spatialreward.student import checkpoint

    config = json.loads((directory / checkpoint.CONFIG_FILE).read_text())
    return config.get("weights_sha256") or checkpoint.file_sha256(directory / checkpoint.WEIGHTS_FILE)


# ---------------------------------------------------------------------------------------------------------------
# Fitting a student folder on a dataset
# ---------------------------------------------------------------------------------------------------------------


def student_views(student) -> tuple[str, ...]:
    """The views a student offers: pixels only with pixel detail (`StudentConfig.pixel_detail`)."""
    return tuple(v for v in VIEWS if v != "pixels" or getattr(student, "detail_proj", None) is not None)


@torch.no_grad()
def collect_views(student, data, *, max_groups: int | None = None, skip_operations: Sequence[str] = (),
                  groups_per_batch: int = 16, progress: bool = False) -> dict[str, torch.Tensor]:
    """Every view of `student_views` (name → ``[E, D_v]``) for the edits of ``data`` (an `EditData`): its first
    ``max_groups`` groups (all by default) whose operation is not in ``skip_operations``, whole groups in order."""
    skip = set(skip_operations)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(data.group.tolist()):
        if str(data.samples[i].meta.get("operation", "")) not in skip:
            members.setdefault(g, []).append(i)
    groups = sorted(members)[:max_groups] if max_groups else sorted(members)
    batches = [[i for g in groups[k:k + groups_per_batch] for i in members[g]]
               for k in range(0, len(groups), groups_per_batch)]
    names = student_views(student)
    captured: dict[str, list[torch.Tensor]] = {v: [] for v in names}
    c = student.cfg.embed_dim

    def grab_head(_module, args):
        captured["instruction"].append(args[0][:, :c].detach().float().cpu())
        captured["evidence"].append(args[1].detach().float().cpu())

    hooks = [student.score_head.register_forward_pre_hook(grab_head)]
    if "pixels" in names:
        hooks.append(student.detail_proj.register_forward_pre_hook(
            lambda _m, args: captured["pixels"].append(args[0].detach().float().cpu())))
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    try:
        from rich.progress import track

        for indices in (track(batches, description="novelty features") if progress else batches):
            batch = data.collate(indices)
            student(batch["source"].to(device), batch["edited"].to(device), batch["text"].to(device),
                    source_index=batch["source_index"].to(device))
    finally:
        for hook in hooks:
            hook.remove()
        student.train(was_training)
    return {v: torch.cat(parts) for v, parts in captured.items()}


def chosen_views(student, views: Sequence[str] | None) -> tuple[str, ...]:
    """``views`` (default: every view of `student_views`), refused unless the student offers each."""
    offered = student_views(student)
    chosen = tuple(offered if views is None else views)
    if not chosen or any(v not in offered for v in chosen):
        raise ValueError(f"views {list(chosen)}: this student offers {list(offered)}")
    return chosen


def fit_student(student, fit_data, calibration_data, *, fit_groups: int | None = None,
                skip_operations: Sequence[str] = (), views: Sequence[str] | None = None, quantile: float = 0.99,
                record: dict[str, Any] | None = None, progress: bool = False) -> NoveltyDetector:
    """The novelty check of ``student`` from two `EditData`: its first ``fit_groups`` groups of ``fit_data`` fit,
    ``calibration_data`` sets the thresholds; edits of ``skip_operations`` (what the run never trained on) are in
    neither. ``views``: a subset of `student_views` (default: all it has). Distill and `fit_student_folder` both
    fit through here."""
    chosen = chosen_views(student, views)

    def features(data, max_groups):
        found = collect_views(student, data, max_groups=max_groups, skip_operations=skip_operations,
                              progress=progress)
        return {v: t for v, t in found.items() if v in chosen}

    return fit_novelty(features(fit_data, fit_groups), features(calibration_data, None), quantile=quantile,
                       record={**(record or {}), "excluded_operations": list(skip_operations)})


def fit_student_folder(model_dir: str | Path, data_dir: str | Path, *, teacher: str = "oracle",
                       fit_split: str = "train", calibration_split: str = "heldout", fit_groups: int = 800,
                       calibration_groups: int = 200, quantile: float = 0.99, views: Sequence[str] | None = None,
                       text_encoder=None, progress: bool = True, log_fn=print) -> dict[str, Any]:
    """Fit the novelty check of a student folder on ``data_dir`` and write ``novelty.safetensors`` beside it.
    ``views``: a subset of `student_views` to model (default: all it has). ``text_encoder``: the instruction
    encoder (default: the one the student was trained with). Returns the fit's record (also in the file's
    header)."""
    from spatialreward.student.data import load_split, mask_target_size
    from spatialreward.student.model import Student
    from spatialreward.student.text import text_encoder_for

    model_dir = Path(model_dir)
    excluded = run_excluded_operations(model_dir)  # what the run never trained on is not "like training"
    student = Student.from_pretrained(model_dir, novelty=False)  # the network alone (an old fit must not block this)
    chosen_views(student, views)  # before any data is read
    kw = dict(teacher=teacher, img_size=student.cfg.input_size, mask_size=mask_target_size(student.cfg.grid),
              text_encoder=text_encoder_for(student.cfg, text_encoder), progress=progress,
              exclude_operations=excluded)
    fit = load_split(data_dir, split=fit_split, max_groups=fit_groups, **kw)
    calibration = load_split(data_dir, split=calibration_split, max_groups=calibration_groups, **kw)
    log_fn(f"novelty: features of {len(fit)} fit edits ({fit_split} split of {data_dir}) and {len(calibration)} "
           f"calibration edits ({calibration_split}) …")
    det = fit_student(student, fit, calibration, skip_operations=excluded, views=views, quantile=quantile,
                      progress=progress, record={"data": str(data_dir), "teacher": teacher, "fit_split": fit_split,
                                                 "calibration_split": calibration_split})
    path = save_novelty(det, model_dir)
    log_fn(f"wrote {path} (thresholds {det.record['threshold_distance']})")
    return {**det.record, "file": str(path)}


def run_excluded_operations(model_dir: str | Path) -> list[str]:
    """The operations a training run never saw (`distill --exclude-operations`, from its distill_config.json)."""
    from spatialreward.student.distill import parse_operations
    from spatialreward.student.run_folder import DISTILL_CONFIG_FILE

    path = Path(model_dir) / DISTILL_CONFIG_FILE
    if not path.is_file():
        return []
    return list(parse_operations(json.loads(path.read_text()).get("exclude_operations") or ""))
