"""Training and evaluation data for the student: a dataset folder + one teacher's labels, preloaded into memory.

Decoding PNGs every epoch would cost more than the nano student's forward pass, so a split is decoded once,
resized to the model's input side and kept as a ``uint8 [M, 3, S, S]`` tensor (a group's source is stored once);
instructions are embedded once per unique string. Batches are then plain tensor indexing.

What is skipped, and counted (`SkipReport`): samples without a label, labels whose status is not ``ok`` (never a
training target without an explicit choice), and samples whose images cannot be read (a bad source drops its
whole group). Each skip keeps its reason; nothing is dropped silently.

`GroupBatchSampler` yields whole GRPO groups, a fixed number of groups per batch, in an order that depends only
on ``(seed, epoch)``: a resumed run regenerates the same order and skips to its step.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from spatialreward.boxes import boxes_to_mask
from spatialreward.dataset import ReadReport, group_samples, read_labels, read_samples
from spatialreward.images import ImageLoadError, load_image, model_side_pixels
from spatialreward.types import WHOLE_IMAGE, EditSample, Judgement

MASK_CELLS_PER_TOKEN = 4  # mask targets live on a grid 4× finer than the tokens (28×28 for a 7×7 grid)


def mask_target_size(grid: tuple[int, int]) -> tuple[int, int]:
    """Side of the mask targets for a student's token ``grid`` (training and evaluation use the same)."""
    gh, gw = grid
    return gh * MASK_CELLS_PER_TOKEN, gw * MASK_CELLS_PER_TOKEN


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image → ``uint8 [3, size, size]`` (`spatialreward.images.model_side_pixels`: the one resize used
    everywhere, training, evaluation, `RewardModel` and the raw server client, so the student never sees a different
    resampling at inference)."""
    arr = model_side_pixels(image, size)  # [S, S, 3]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def union_box(boxes: list[list[float]]) -> tuple[float, float, float, float]:
    """The bounding box of all boxes (0–1000); no box → the whole image (the region is then "everything")."""
    if not boxes:
        return WHOLE_IMAGE
    b = np.asarray(boxes, dtype=np.float64)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


@dataclass
class SkipReport:
    """What loading a split kept and dropped, with reasons."""

    kept: int = 0
    groups: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason kind -> count
    examples: list[str] = field(default_factory=list)  # first few "sample_id: reason"

    def skip(self, kind: str, sample_id: str, reason: str, count: int = 1) -> None:
        self.skipped[kind] += count
        if len(self.examples) < 20:
            self.examples.append(f"{sample_id}: {reason}")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"kept {self.kept} edits in {self.groups} groups"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "groups": self.groups, "skipped": dict(self.skipped), "examples": self.examples}


class EditData(torch.utils.data.Dataset):
    """A preloaded split. ``self[i]`` is one edit; `collate` builds a batch from a list of indices.

    Tensors: ``images uint8 [M, 3, S, S]`` (after `prepare`: None, and ``prepared`` holds their weight-free part);
    per edit ``source_index``/``edited_index`` into it, ``text_index`` into ``text [U, D]``, ``subscores [E, 4]``,
    ``reward [E]``, ``masks uint8 [E, h, w]`` (teacher boxes rasterised on a grid 4× finer than the tokens),
    ``boxes [E, 4]`` (union box, 0–1000), ``group [E]`` (group number).
    """

    def __init__(
        self,
        *,
        samples: list[EditSample],
        judgements: list[Judgement],
        images: torch.Tensor,
        source_index: torch.Tensor,
        edited_index: torch.Tensor,
        text: torch.Tensor,
        text_index: torch.Tensor,
        mask_size: tuple[int, int],
        report: SkipReport,
    ):
        self.samples = samples
        self.judgements = judgements
        self.images: torch.Tensor | None = images
        self.prepared: tuple | None = None  # set by `prepare`
        self.source_index = source_index
        self.edited_index = edited_index
        self.text = text
        self.text_index = text_index
        self.report = report
        self.subscores = torch.tensor([j.subscores for j in judgements], dtype=torch.float32).reshape(-1, 4)
        self.reward = torch.tensor([j.reward for j in judgements], dtype=torch.float32)
        h, w = mask_size
        self.masks = torch.from_numpy(
            np.stack([boxes_to_mask(j.boxes, h, w) for j in judgements]).astype(np.uint8)
            if judgements else np.zeros((0, h, w), np.uint8)
        )
        self.boxes = torch.tensor([union_box(j.boxes) for j in judgements], dtype=torch.float32).reshape(-1, 4)
        self.presence = torch.tensor([1.0 if j.boxes else 0.0 for j in judgements])
        group_ids = list(dict.fromkeys(s.group_id for s in samples))
        number = {g: i for i, g in enumerate(group_ids)}
        self.group_ids = group_ids
        self.group = torch.tensor([number[s.group_id] for s in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def prepare(self, prepare_images: Callable[[torch.Tensor], Any], levels: int, *, chunk: int = 256,
                progress: bool = True) -> None:
        """Replace the uint8 images with their weight-free part, computed once (`Student.prepare_images`).

        ``prepare_images`` maps images in 0–1 to a ``(backbone, pixels)`` named tuple; `collate` then returns that
        tuple for ``source`` and ``edited``. The backbone input (an average of uint8 pixels) is stored exactly as
        integer multiples of ``1 / levels`` in int16 (``levels = 255 · pool²``: half the bytes of the uint8 images
        at a 2× pool, an eighth of fp32), checked on every chunk; the pixel statistics in fp32.
        """
        if self.images is None:
            return
        if levels > torch.iinfo(torch.int16).max:
            raise ValueError(f"levels={levels} does not fit int16; train without --prepare-images")
        rows = range(0, len(self.images), chunk)
        if progress:
            from rich.progress import track

            rows = track(rows, description="preparing images (weight-free part, once)")
        backbone, pixels, kind = [], [], None
        with torch.no_grad():
            for start in rows:
                out = prepare_images(self.images[start:start + chunk].float().div_(255.0))
                units = torch.round(out.backbone * levels)
                err = float((units / levels - out.backbone).abs().max()) if units.numel() else 0.0
                if err > 1e-6:
                    raise ValueError(f"the backbone input is not a multiple of 1/{levels} (off by {err:.2g}); "
                                     "train without --prepare-images")
                backbone.append(units.to(torch.int16))
                pixels.append(out.pixels.float())
                kind = type(out)
        self.prepared = (kind, torch.cat(backbone), torch.cat(pixels), float(levels))
        self.images = None  # the uint8 images are no longer needed: collate serves the prepared rows

    def _image_rows(self, rows: torch.Tensor) -> Any:
        """Images ``[n, 3, S, S]`` float 0–1 at ``rows``, or their prepared form after `prepare`."""
        if self.prepared is None:
            return self.images[rows].float().div_(255.0)
        kind, backbone, pixels, levels = self.prepared
        return kind(backbone[rows].float().div_(levels), pixels[rows])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.collate([i])

    @property
    def num_groups(self) -> int:
        return len(self.group_ids)

    def collate(self, indices: list[int] | torch.Tensor) -> dict[str, Any]:
        """A batch dict for edit ``indices``; images as float 0–1.

        A group's source appears once in ``source [U, 3, S, S]``; ``source_index [B]`` says which row each edit
        uses. With whole groups per batch that is 9 images per 8 edits through the backbone instead of 16.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        unique_sources, source_index = torch.unique(self.source_index[idx], return_inverse=True)
        _, groups = torch.unique(self.group[idx], return_inverse=True)
        return {
            "index": idx,
            "source": self._image_rows(unique_sources),  # [U, 3, S, S]
            "source_index": source_index,  # [B] rows of `source`
            "edited": self._image_rows(self.edited_index[idx]),  # [B, 3, S, S]
            "text": self.text[self.text_index[idx]],  # [B, D]
            "subscores": self.subscores[idx],
            "reward": self.reward[idx],
            "mask": self.masks[idx].float(),  # [B, h, w]
            "presence": self.presence[idx],
            "region_boxes": self.boxes[idx].clone(),  # [B, 4] union of teacher boxes, 0–1000
            "group_index": groups,  # [B] 0..G-1 within the batch
        }


def token_coverage(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each token cell covered by a ``[B, h, w]`` mask → ``[B, gh, gw]`` (the teacher-forced region)."""
    return F.adaptive_avg_pool2d(mask.unsqueeze(1), grid)[:, 0]


CACHE_DIR = ".cache/student"


def _fingerprint(paths: dict[str, Path], size: int) -> str:
    """Hash of the image files (path, size, mtime) and the target side: any change makes a new cache entry."""
    import hashlib

    h = hashlib.sha256(f"v1 {size}".encode())
    for key, path in sorted(paths.items()):
        try:
            st = path.stat()
            h.update(f"{key} {st.st_size} {st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{key} missing\n".encode())
    return h.hexdigest()[:24]


def decode_images(
    paths: dict[str, Path],
    size: int,
    *,
    workers: int = 2,
    progress: bool = True,
    label: str = "",
    cache_dir: Path | None = None,
) -> tuple[torch.Tensor, dict[str, int], dict[str, str]]:
    """Decode and resize images (thread pool); returns ``images uint8 [N, 3, S, S]``, ``{key: row}`` of the
    decoded ones and ``{key: error}`` of the others.

    With ``cache_dir``, the result is stored as one safetensors file named by a fingerprint of the files, and read
    back when the same files (same sizes and mtimes) are asked for again. A cache that cannot be written (a
    read-only dataset) is skipped with a warning; a damaged one is ignored and rebuilt.
    """
    import json
    import warnings

    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"images-{size}-{_fingerprint(paths, size)}.safetensors"
        if cache_file.is_file():
            try:
                from safetensors import safe_open

                with safe_open(str(cache_file), framework="pt") as fh:
                    meta = fh.metadata()
                    keys, failed = json.loads(meta["keys"]), json.loads(meta["failed"])
                    images = fh.get_tensor("images")
                if set(keys) | set(failed) == set(paths):
                    return images, {k: i for i, k in enumerate(keys)}, failed
            except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
                warnings.warn(f"{cache_file}: unreadable image cache ({exc}); decoding again", stacklevel=2)
    # Decoded straight into one preallocated tensor: a split at 224 px is ~1.4 MB a group, so a stacked copy for the
    # cache (and its serialised bytes) would triple the peak memory of a 10,000-group set.
    jobs = [(k, p, size) for k, p in paths.items()]
    images = torch.empty(len(jobs), 3, size, size, dtype=torch.uint8)
    rows: dict[str, int] = {}
    failed = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decodes outside the GIL
        it = pool.map(_load_one, jobs)
        if progress:
            from rich.progress import track

            it = track(it, total=len(jobs), description=f"decoding {label} images")
        for key, tensor, error in it:
            if tensor is None:
                failed[key] = error or "unreadable"
            else:
                rows[key] = len(rows)
                images[rows[key]] = tensor
    images = images[: len(rows)]
    if cache_file is not None and rows:
        _write_image_cache(cache_file, images, list(rows), failed)
    return images, rows, failed


def _write_image_cache(cache_file: Path, images: torch.Tensor, keys: list[str], failed: dict[str, str]) -> None:
    """One safetensors file, written from the tensor itself (no bytes copy) and renamed into place whole."""
    import json
    import warnings

    from safetensors.torch import save_file

    from spatialreward.dataset import atomic_path

    try:
        with atomic_path(cache_file) as tmp:
            save_file({"images": images.contiguous()}, str(tmp),
                      metadata={"keys": json.dumps(keys), "failed": json.dumps(failed)})
    except OSError as exc:
        warnings.warn(f"{cache_file}: cannot write the image cache ({exc}); continuing without it", stacklevel=3)


def _load_one(args: tuple[str, Path, int]) -> tuple[str, torch.Tensor | None, str | None]:
    key, path, size = args
    try:
        return key, preprocess_image(load_image(path), size), None
    except ImageLoadError as exc:
        return key, None, exc.reason
    except OSError as exc:
        return key, None, str(exc)


def load_split(
    root: str | Path,
    *,
    split: str | None,
    teacher: str,
    img_size: int,
    mask_size: tuple[int, int],
    text_encoder,
    max_groups: int | None = None,
    workers: int = 2,
    progress: bool = True,
    cache: bool = True,
    exclude_operations: Sequence[str] = (),
) -> EditData:
    """Read samples of ``split`` and ``teacher`` labels under ``root``; decode, resize and embed them once.

    ``text_encoder`` has ``encode(list[str]) -> [B, D]`` (`InstructionEncoder`). ``max_groups`` keeps the first
    groups only (tests, quick looks). With ``cache``, resized images are kept in ``root/.cache/student`` (see
    `decode_images`), so a second run over the same files skips decoding. ``exclude_operations`` drops the groups
    of those edit operations (``meta["operation"]``) after decoding, so the split's image cache is the one that runs
    keeping them use.
    """
    root = Path(root)
    read_report = ReadReport()
    samples = read_samples(root, split=split, report=read_report)
    report = SkipReport()
    for err in read_report.errors:
        report.skip("bad sample records", f"{err.path}:{err.line}", err.reason)
    if not samples:
        raise ValueError(
            f"{root}: no samples in split {split!r} (splits present: "
            f"{sorted({str(s.split) for s in read_samples(root)})})"
        )
    labels = read_labels(root, teacher)
    groups = group_samples(samples)
    if max_groups is not None:
        groups = type(groups)(list(groups.items())[:max_groups])

    # Keep labelled, ok edits; the source of a group is decoded once.
    kept: list[tuple[EditSample, Judgement]] = []
    for members in groups.values():
        for s in members:
            j = labels.get(s.sample_id)
            if j is None:
                report.skip("unlabelled", s.sample_id, f"no {teacher!r} label")
            elif not j.ok:
                report.skip(f"not ok ({j.status})", s.sample_id, j.error or j.status)
            else:
                kept.append((s, j))

    paths: dict[str, Path] = {}
    for s, _ in kept:
        paths.setdefault(str(s.source_path(root)), s.source_path(root))
        paths.setdefault(str(s.edited_path(root)), s.edited_path(root))
    images, slot, failed = decode_images(
        paths, img_size, workers=workers, progress=progress, label=split or "all",
        cache_dir=root / CACHE_DIR if cache else None,
    )

    bad_groups = {s.group_id for s, _ in kept if str(s.source_path(root)) in failed}
    final: list[tuple[EditSample, Judgement]] = []
    held_out = 0
    for s, j in kept:
        src, edt = str(s.source_path(root)), str(s.edited_path(root))
        if s.group_id in bad_groups:
            report.skip("unreadable source image", s.sample_id, f"{src}: {failed.get(src, 'group source failed')}")
        elif edt in failed:
            report.skip("unreadable edited image", s.sample_id, f"{edt}: {failed[edt]}")
        elif s.meta.get("operation") in exclude_operations:
            held_out += 1
        else:
            final.append((s, j))
    if held_out:
        report.skip("held-out operation", f"{held_out} edits", f"operation in {sorted(exclude_operations)}",
                    count=held_out)
    if not final:
        raise ValueError(f"{root}: nothing usable in split {split!r}: {report.summary()}; e.g. {report.examples[:3]}")

    # `images` [M, 3, S, S] uint8 stays the decoded tensor (rows of skipped edits are unused, never copied).
    instructions = list(dict.fromkeys(s.instruction for s, _ in final))
    text = text_encoder.encode(instructions).float()  # [U, D]
    text_slot = {t: i for i, t in enumerate(instructions)}
    report.kept = len(final)
    report.groups = len({s.group_id for s, _ in final})
    return EditData(
        samples=[s for s, _ in final],
        judgements=[j for _, j in final],
        images=images,
        source_index=torch.tensor([slot[str(s.source_path(root))] for s, _ in final]),
        edited_index=torch.tensor([slot[str(s.edited_path(root))] for s, _ in final]),
        text=text,
        text_index=torch.tensor([text_slot[s.instruction] for s, _ in final]),
        mask_size=mask_size,
        report=report,
    )


class GroupBatchSampler:
    """Batches of whole groups: ``groups_per_batch`` groups each, shuffled per epoch from ``(seed, epoch)``.

    With ``world_size > 1`` (DDP) rank ``r`` takes every ``world_size``-th batch starting at ``r``, so the ranks
    see disjoint groups and the same number of steps. The last incomplete batch of an epoch is dropped when
    training (``drop_last``), so every step has the same number of groups.
    """

    def __init__(
        self,
        group: torch.Tensor,
        groups_per_batch: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.members: dict[int, list[int]] = {}
        for i, g in enumerate(group.tolist()):
            self.members.setdefault(g, []).append(i)
        self.group_list = sorted(self.members)
        self.groups_per_batch = groups_per_batch
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        n = len(self.group_list)
        total = n // groups_per_batch if drop_last else math.ceil(n / groups_per_batch)
        self.steps_per_epoch = total // world_size if drop_last else math.ceil(total / world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{n} groups cannot fill one batch of {groups_per_batch} groups on {world_size} process(es); "
                f"lower groups_per_batch to at most {max(1, n // world_size)} or add data"
            )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = list(self.group_list)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
        chunks = [order[i : i + self.groups_per_batch] for i in range(0, len(order), self.groups_per_batch)]
        if self.drop_last and chunks and len(chunks[-1]) < self.groups_per_batch:
            chunks.pop()
        mine = chunks[self.rank :: self.world_size][: self.steps_per_epoch]
        return [[i for g in chunk for i in self.members[g]] for chunk in mine]

    def __iter__(self):
        yield from self.epoch_batches(0)
