"""A tiny, fast, learnable edit dataset for tests and examples (not the real synthetic set of `spatialreward.synth`).

Each group: a smooth random source image, the instruction "paint the <position> square <colour>", and candidates
that do it right, in the wrong colour, at the wrong place, not at all, or right but with noise all over. Labels
follow fixed rules (``instruction_following`` high only for right place and colour, ``consistency`` drops with
changes outside, ``artifacts`` drops with noise), written as ``ok`` judgements of the teacher ``"oracle"``; one
label can be made ``parse_error`` to exercise skipping. Built in well under a second for a dozen groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from spatialreward.dataset import labels_dir, write_label_shard, write_samples
from spatialreward.types import EditSample, Judgement

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (30, 70, 230), "yellow": (240, 220, 30)}
POSITIONS = {"upper-left": (0, 0), "upper-right": (0, 1), "lower-left": (1, 0), "lower-right": (1, 1)}
# candidate kind -> (instruction_following, consistency, naturalness, artifacts)
KIND_SCORES = {
    "correct": (23.0, 22.0, 20.0, 21.0),
    "wrong_colour": (8.0, 21.0, 19.0, 20.0),
    "wrong_place": (4.0, 10.0, 18.0, 19.0),
    "noisy": (20.0, 14.0, 9.0, 5.0),
    "no_edit": (1.0, 25.0, 24.0, 24.0),
}


def _source(rng: np.random.Generator, size: int) -> np.ndarray:
    low = rng.uniform(40, 200, size=(4, 4, 3))
    img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255)


def _square(position: str, size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    row, col = POSITIONS[position]
    side = int(size * rng.uniform(0.25, 0.35))
    half = size // 2
    y0 = row * half + int(rng.uniform(0.05, 0.95) * (half - side))
    x0 = col * half + int(rng.uniform(0.05, 0.95) * (half - side))
    return x0, y0, x0 + side, y0 + side


def make_fake_dataset(
    root: str | Path,
    groups: int = 12,
    *,
    size: int = 64,
    seed: int = 0,
    heldout_fraction: float = 0.25,
    kinds: tuple[str, ...] = tuple(KIND_SCORES),
    bad_label: bool = False,
) -> Path:
    """Write a dataset folder with ``groups`` groups of ``len(kinds)`` edits and oracle labels; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    samples, judgements = [], []
    n_heldout = int(round(groups * heldout_fraction))
    for g in range(groups):
        gid = f"g{g:04d}"
        split = "heldout" if g >= groups - n_heldout else "train"
        folder = root / "images" / gid
        folder.mkdir(parents=True, exist_ok=True)
        src = _source(rng, size)
        Image.fromarray(src.astype(np.uint8)).save(folder / "source.png")
        position = str(rng.choice(list(POSITIONS)))
        colour = str(rng.choice(list(COLOURS)))
        instruction = f"paint the {position} square {colour}"
        for k, kind in enumerate(kinds):
            img = src.copy()
            boxes: list[list[float]] = []
            if kind != "no_edit":
                pos = position
                if kind == "wrong_place":
                    pos = str(rng.choice([p for p in POSITIONS if p != position]))
                col = colour if kind != "wrong_colour" else str(rng.choice([c for c in COLOURS if c != colour]))
                x0, y0, x1, y1 = _square(pos, size, rng)
                img[y0:y1, x0:x1] = COLOURS[col]
                boxes = [[x0 * 1000 / size, y0 * 1000 / size, x1 * 1000 / size, y1 * 1000 / size]]
            if kind == "noisy":
                img = np.clip(img + rng.normal(0, 40, img.shape), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{k}.png")
            sid = f"{gid}-{k}"
            samples.append(EditSample(
                sample_id=sid, source=f"images/{gid}/source.png", edited=f"images/{gid}/{k}.png",
                instruction=instruction, group_id=gid, split=split, meta={"kind": kind},
            ))
            jitter = rng.uniform(-1.0, 1.0, 4)
            scores = np.clip(np.asarray(KIND_SCORES[kind]) + jitter, 0, 25).tolist()
            judgements.append(Judgement.from_subscores(sid, "oracle", scores, boxes))
    if bad_label:
        judgements[1] = Judgement.failure(judgements[1].sample_id, "oracle", "parse_error", "no JSON in the answer")
    write_samples(root, samples)
    write_label_shard(labels_dir(root, "oracle") / "part-00000.jsonl", judgements)
    return root


class HashingTextEncoder:
    """Stand-in for `InstructionEncoder` in fast tests: a bag of words, each word a fixed random vector seeded by
    its hash, summed and normalised (384 wide). Like a sentence encoder, "upper-left … red" shares words with
    "upper-left … blue", so a student can generalise across instructions; it knows no language beyond that."""

    dim = 384

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _word(word: str):
        import hashlib

        import torch

        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return torch.randn(HashingTextEncoder.dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, instructions):
        import torch

        out = []
        for text in instructions:
            words = text.lower().split() or [""]
            vec = torch.stack([self._word(w) for w in words]).sum(0)
            out.append(vec / vec.norm())
            self.calls += 1
        return torch.stack(out) if out else torch.zeros(0, self.dim)
