"""Pictures people would rather look at: mask overlays and a contact sheet of one GRPO group.

`overlay_mask` tints a mask onto an image and outlines 0–1000 boxes; `group_contact_sheet` lays out the source and
every candidate of a group with its overlay, sub-scores and reward underneath (matplotlib, Agg backend).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spatialreward.boxes import boxes_to_mask, normalized_to_pixels
from spatialreward.types import SUBSCORE_NAMES, EditSample, Judgement

MASK_COLOR = (255, 40, 40)
BOX_COLOR = (255, 220, 0)


def overlay_mask(
    image: Image.Image,
    mask: np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] = (),
    *,
    alpha: float = 0.45,
    color: tuple[int, int, int] = MASK_COLOR,
) -> Image.Image:
    """``image`` with ``mask`` (bool ``[h, w]``, any size; resized to the image) tinted and 0–1000 ``boxes`` drawn."""
    img = image.convert("RGB")
    arr = np.asarray(img).astype(np.float32)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (img.height, img.width):
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(img.size, Image.NEAREST)) > 127
        arr[m] = (1 - alpha) * arr[m] + alpha * np.asarray(color, np.float32)
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if len(boxes):
        draw = ImageDraw.Draw(out)
        width = max(1, round(img.width / 150))
        for x1, y1, x2, y2 in normalized_to_pixels(boxes, img.height, img.width):
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=BOX_COLOR, width=width)
    return out


def _caption(sample: EditSample, judgement: Judgement | None) -> str:
    kind = sample.meta.get("kind", "")
    head = f"{sample.sample_id}" + (f" [{kind}]" if kind else "")
    if judgement is None:
        return head + "\n(no label)"
    if not judgement.ok:
        return head + f"\n{judgement.status}: {(judgement.error or '')[:40]}"
    short = ("IF", "CO", "NA", "AR")
    scores = " ".join(f"{n}{v:.1f}" for n, v in zip(short, judgement.subscores))
    return head + f"\n{scores}\nreward {judgement.reward:.3f}"


def group_contact_sheet(
    root: str | Path,
    samples: Sequence[EditSample],
    labels: dict[str, Judgement],
    out: str | Path,
    *,
    columns: int = 5,
    thumb: int = 200,
) -> Path:
    """Write a PNG: the group's source, then each candidate with its label's boxes as a mask overlay + scores.

    The overlay is the teacher's boxes rasterised (what the student learns); when the sample carries an exact
    changed-pixel mask (``meta["masks"]["changed"]``, synthetic sets) it is outlined as well, in a second colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spatialreward.images import load_image

    if not samples:
        raise ValueError("group_contact_sheet needs at least one sample")
    root = Path(root)
    first = samples[0]
    caption = "source\n" + textwrap.fill(f'"{first.instruction}"', 38)  # a long instruction wraps, not overlaps
    tiles: list[tuple[Image.Image, str]] = [(load_image(first.source_path(root)).resize((thumb, thumb)), caption)]
    for s in samples:
        edited = load_image(s.edited_path(root))
        j = labels.get(s.sample_id)
        boxes = j.boxes if (j is not None and j.ok) else []
        mask = boxes_to_mask(boxes, edited.height, edited.width) if boxes else None
        tile = overlay_mask(edited, mask, boxes)
        changed = s.meta.get("masks", {}).get("changed") if isinstance(s.meta.get("masks"), dict) else None
        if changed and (root / changed).exists():
            exact = np.asarray(Image.open(root / changed).convert("L").resize(tile.size, Image.NEAREST)) > 127
            tile = overlay_mask(tile, _outline(exact), alpha=0.9, color=(0, 200, 255))
        tiles.append((tile.resize((thumb, thumb)), _caption(s, j)))

    rows = -(-len(tiles) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 3.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, caption) in zip(axes.flat, tiles):
        ax.imshow(img)
        ax.set_title(caption, fontsize=7.5, loc="left")
    fig.suptitle(
        f"group {first.group_id} — red: teacher boxes (mask), yellow: boxes, cyan: exact changed pixels\n"
        f"scores: {', '.join(SUBSCORE_NAMES)} (0–25); reward 0–1",
        fontsize=9,
    )
    fig.tight_layout(h_pad=2.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=2)
