"""Build synthetic GRPO groups in memory (`make_group`) and write a whole dataset folder (`generate_dataset`).

A group is one source view + one instruction + G candidates (`candidates.KINDS`), each with exact ground truth
(`truth`). Group ``i`` of a set draws everything from ``np.random.default_rng([seed, i])``, so a set is the same
bytes whatever the number of worker processes, and any group can be rebuilt alone. Held-out groups (every
``1/heldout_fraction``-th group) use only held-out photos (`photos.split_photos`).

Folder layout (paths in ``samples.jsonl`` are relative to the folder)::

    DIR/synth.json                      the settings, the photo split and the counts
    DIR/samples.jsonl                   one EditSample per candidate, groups in order
    DIR/images/<group>/source.png, <k>.png
    DIR/masks/<group>/intended.png, <k>_changed.png
    DIR/images/<group>/group.json       the group's samples; written last, so it marks a finished group

An interrupted run resumes: groups with a ``group.json`` made by the same settings are read back, not rebuilt; the
same way, running again with more ``groups`` extends a set (``samples.jsonl`` always lists the groups asked for).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spatialreward.dataset import DatasetError, atomic_write_bytes, write_samples
from spatialreward.synth import candidates as cand
from spatialreward.synth import truth
from spatialreward.synth.artifacts import jitter
from spatialreward.synth.failures import DEFAULT_HELDOUT_FAMILIES, FailurePools, check_families
from spatialreward.synth.instructions import DEFAULT_HELDOUT_PHRASING, PHRASINGS, render_instruction, render_phrased
from spatialreward.synth.objects import colour_hue
from spatialreward.synth.operations import CLASSIC_OPERATION_WEIGHTS, OPERATION_WEIGHTS, OPERATIONS
from spatialreward.synth.photos import (SOURCE_PHOTOS, available_eval_photos, available_photos, load_eval_photo,
                                       load_photo, photo_load_failures, random_view, split_photos)
from spatialreward.synth.scenes import DEFAULT_HELDOUT_STYLES, SCENE_STYLES, render_scene
from spatialreward.types import WHOLE_IMAGE, EditSample

GENERATOR_VERSION = "synth-v3"  # bump when the same seed would give different data (the diverse recipe)
# synth-v3: move and resize edits, same-kind decoys, relative positions, two-region recolours, compound failures
CLASSIC_VERSION = "synth-v1"  # the classic recipe, byte-identical to the generator before failure families
MANIFEST = "synth.json"


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


RECIPES = ("diverse", "classic")
LAYOUTS = ("train", "generalisation")
# Splits of a generalisation set, in the order groups cycle through them; each shifts one factor from training.
GENERALISATION_SPLITS = ("in_distribution", "heldout_photos", "heldout_scenes", "heldout_phrasing",
                         "heldout_failures", "eval_pool")


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one synthetic set. Everything that changes the bytes is here (and in ``synth.json``).

    Parameters that shape the data:
        groups: number of GRPO groups (source + instruction + ``candidates`` edits).
        seed: the set's seed; the same seed gives byte-identical images and samples.
        candidates: edits per group (G); 8 gives one of each kind.
        size: square image side in pixels.
        heldout_fraction: share of groups (and of source photos) kept for the held-out split.
        recipe: ``diverse`` (failure families, rendered scenes, phrasing families) or ``classic`` (``synth-v1``,
            byte-identical to the old generator: five artifact types, one over-edit, photos only).
        layout: ``train`` (splits ``train`` + ``heldout``) or ``generalisation`` (an evaluation-only set whose
            groups cycle through `GENERALISATION_SPLITS`, each holding out one factor).
        procedural_fraction: share of training groups whose source is a rendered scene instead of a photo.
        heldout_families / heldout_phrasing / heldout_scene_styles: never in training; only in the generalisation
            layout's ``heldout_failures`` / ``heldout_phrasing`` / ``heldout_scenes`` splits.
    """

    groups: int = field(default=200, metadata={"help": "Number of GRPO groups."})
    seed: int = field(default=0, metadata={"help": "Seed; same seed → same bytes."})
    candidates: int = field(default=8, metadata={"help": "Candidates per group (8 = one per kind)."})
    size: int = field(default=224, metadata={"help": "Image side in pixels."})
    heldout_fraction: float = field(default=0.2, metadata={"help": "Share of groups and photos held out."})
    recipe: str = field(default="diverse", metadata={"help": "diverse or classic (the synth-v1 generator)."})
    layout: str = field(default="train", metadata={"help": "train (train + heldout) or generalisation."})
    procedural_fraction: float = field(default=0.35, metadata={"help": "Share of rendered-scene sources."})
    heldout_families: tuple[str, ...] = field(default=DEFAULT_HELDOUT_FAMILIES)
    heldout_phrasing: str = field(default=DEFAULT_HELDOUT_PHRASING)
    heldout_scene_styles: tuple[str, ...] = field(default=DEFAULT_HELDOUT_STYLES)

    def __post_init__(self) -> None:
        if self.groups < 1:
            raise ValueError(f"groups={self.groups}: need at least 1 group")
        if self.candidates < 2:
            raise ValueError(f"candidates={self.candidates}: a GRPO group needs at least 2 edits to rank (use 8)")
        if not 48 <= self.size <= 1024:
            raise ValueError(f"size={self.size}: use 48–1024 pixels (objects and regions need room; 224 is usual)")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={self.heldout_fraction}: use a value in [0, 1), e.g. 0.2")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe={self.recipe!r}: use one of {', '.join(RECIPES)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.layout == "generalisation" and self.recipe != "diverse":
            raise ValueError("layout='generalisation' needs recipe='diverse' (the classic generator has no families)")
        if not 0.0 <= self.procedural_fraction <= 1.0:
            raise ValueError(f"procedural_fraction={self.procedural_fraction}: use a value in [0, 1]")
        object.__setattr__(self, "heldout_families", check_families(tuple(self.heldout_families)))
        object.__setattr__(self, "heldout_scene_styles", tuple(self.heldout_scene_styles))
        bad = [s for s in self.heldout_scene_styles if s not in SCENE_STYLES]
        if bad or len(self.heldout_scene_styles) >= len(SCENE_STYLES):
            raise ValueError(f"heldout_scene_styles={self.heldout_scene_styles}: use some (not all) of "
                             f"{', '.join(SCENE_STYLES)}")
        if self.heldout_phrasing not in PHRASINGS:
            raise ValueError(f"heldout_phrasing={self.heldout_phrasing!r}: use one of {', '.join(PHRASINGS)}")
        FailurePools.split(self.heldout_families, evaluation=False)  # raises when a kind has nothing left

    def split_of(self, index: int) -> str:
        """Train layout: ``heldout`` for evenly spread groups (exactly ``round(groups · fraction)`` of them), else
        ``train``. Generalisation layout: the groups cycle through `GENERALISATION_SPLITS`."""
        if self.layout == "generalisation":
            return GENERALISATION_SPLITS[index % len(GENERALISATION_SPLITS)]
        f = self.heldout_fraction
        return "heldout" if math.floor((index + 1) * f) > math.floor(index * f) else "train"


@dataclass
class SynthReport:
    """What `generate_dataset` made: counts per kind / split / operation, time and size on disk."""

    out: str
    groups: int
    samples: int
    seconds: float
    bytes_on_disk: int
    kinds: dict[str, int]
    splits: dict[str, int]  # samples per split
    groups_per_split: dict[str, int]
    operations: dict[str, int]  # groups per operation
    photos: dict[str, list[str]]
    resumed_groups: int = 0
    workers: int = 1
    cpu_seconds: float = 0.0  # CPU time spent building groups, summed over workers (wall × cores when idle)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# In-memory API
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One edit with its truth. ``image`` is uint8 ``[H, W, 3]``; ``changed`` the bool change mask."""

    kind: str
    image: np.ndarray
    changed: np.ndarray
    boxes: list[list[float]]
    subscores: list[float]
    measures: dict[str, float]
    applied: str
    params: dict[str, Any]

    @property
    def reward(self) -> float:
        from spatialreward.formula import reward_from_subscores

        return float(reward_from_subscores(self.subscores))


@dataclass
class Group:
    """One GRPO group in memory: uint8 source, instruction, intended mask and candidates (shuffled order)."""

    source: np.ndarray
    instruction: str
    operation: str
    family: str
    attribute: str
    target: str
    position: str
    intended: np.ndarray
    intended_boxes: list[list[float]]
    candidates: list[Candidate]
    describe: dict[str, str] = field(default_factory=dict)  # attribute key → phrase, for applied attributes
    phrasing: str = ""  # the instruction's phrasing family (diverse recipe; "" for the classic templates)


def _quantise(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def _visible(ideal: np.ndarray, source: np.ndarray, mask: np.ndarray) -> bool:
    if mask.sum() < truth.min_area(source.shape[0]):
        return False
    return float(np.abs(ideal - source).mean(axis=2)[mask].mean()) >= 0.06


def pick_operation(rng: np.random.Generator, classic: bool = False) -> str:
    weights = CLASSIC_OPERATION_WEIGHTS if classic else OPERATION_WEIGHTS
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def make_group(
    rng: np.random.Generator,
    photo: np.ndarray,
    *,
    size: int = 224,
    candidates: int = 8,
    operation: str | None = None,
    failures: FailurePools | None = None,
    phrasings: tuple[str, ...] | None = None,
) -> Group:
    """Build one group from an RGB uint8 ``photo`` (any size): plan an edit, render G candidates, measure them.

    ``operation`` forces one of `operations.OPERATIONS` (default: drawn by `OPERATION_WEIGHTS`). An edit that
    would be invisible (e.g. "make it black and white" on a grey photo) is re-planned, up to 12 times.
    ``failures`` (artifact / over-edit families to draw from) and ``phrasings`` (instruction phrasing families)
    select the diverse recipe; left None, the group is the classic generator's (``synth-v1``).
    """
    with _one_blas_thread():
        return _make_group(rng, photo, size=size, candidates=candidates, operation=operation, failures=failures,
                           phrasings=phrasings)


@contextmanager
def _one_blas_thread():
    """Run with one BLAS thread: the products here are skinny, and a multi-threaded OpenBLAS on a busy 2-core
    machine was measured 50–300× slower on them than a single thread (threadpoolctl, when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _make_group(rng: np.random.Generator, photo: np.ndarray, *, size: int, candidates: int,
                operation: str | None, failures: FailurePools | None, phrasings: tuple[str, ...] | None) -> Group:
    varied = failures is not None  # the diverse recipe; the classic one makes synth-v1's draws exactly
    op = OPERATIONS[operation or pick_operation(rng, classic=not varied)]
    scale = size / 224
    for _ in range(12):
        base = random_view(rng, photo, size)
        plan = op.plan(rng, base, varied=varied)
        plan.source = _quantise(plan.source).astype(np.float32) / 255.0
        ideal, _ = op.render(plan, plan.source, plan.attribute, plan.region, 1.0 * scale)
        if _visible(ideal, plan.source, plan.region.mask):
            break
    source = plan.source
    if phrasings is None:
        instruction, phrasing = render_instruction(rng, plan.family, plan.words), ""
    else:
        instruction, phrasing = render_phrased(rng, plan.family, plan.words, phrasings)
    intended = plan.region.mask
    ref = truth.reference(source, ideal, intended, is_global=op.is_global,
                          target_hue=colour_hue(plan.attribute) if op.name == "recolour" else None)
    kinds = cand.kinds_for(candidates, op.is_global)
    drafts = [cand.make_candidate(rng, op, plan, kind, ideal, failures) for kind in kinds]
    out: list[Candidate] = []
    for i in rng.permutation(len(drafts)):
        d = drafts[int(i)]
        edited = _quantise(jitter(rng, d.edited)).astype(np.float32) / 255.0
        change = np.abs(d.content - source).mean(axis=2)  # [H, W], shared by the mask and the measures
        diff_all, diff_top = truth.diff_masks(source, d.content, keeps=(None, truth.MAX_BOXES), change=change)
        if d.global_change:
            changed = np.ones_like(intended)
            boxes = [list(WHOLE_IMAGE)]
        else:
            changed = diff_top
            boxes = truth.boxes_of(changed)
        measures = truth.measure(ref, d.content, edited, diff_all, own_ideal=d.own_ideal, change=change,
                                 chroma=failures is not None)
        out.append(Candidate(kind=d.kind, image=_quantise(edited), changed=changed, boxes=boxes,
                             subscores=truth.subscores(measures), measures=measures, applied=d.applied,
                             params=d.params))
    intended_boxes = [list(WHOLE_IMAGE)] if op.is_global else truth.boxes_of(intended)
    describe = {c.applied: op.describe(c.applied) for c in out if c.applied}
    return Group(source=_quantise(source), instruction=instruction, operation=op.name, family=plan.family,
                 attribute=op.describe(plan.attribute), target=plan.words.get("target", ""),
                 position=plan.words.get("pos", ""), intended=intended,
                 intended_boxes=intended_boxes, candidates=out, describe=describe, phrasing=phrasing)


# ---------------------------------------------------------------------------------------------------------------
# Writing a dataset
# ---------------------------------------------------------------------------------------------------------------


def _save_png(path: Path, array: np.ndarray) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)
    return path.stat().st_size


def _group_samples(group: Group, group_id: str, split: str, photo: str, config: SynthConfig,
                   source_kind: str) -> list[dict[str, Any]]:
    classic = config.recipe == "classic"
    samples = []
    for k, c in enumerate(group.candidates):
        meta = {
            "kind": c.kind,
            "operation": group.operation,
            "family": group.family,
            "photo": photo,
            "target": group.target,
            "position": group.position,
            "attribute": group.attribute,
            "applied": group.describe.get(c.applied, ""),
            "params": c.params,
            "truth": {
                "boxes": c.boxes,
                "intended_boxes": group.intended_boxes,
                "subscores": c.subscores,
                "measures": c.measures,
            },
            "masks": {"changed": f"masks/{group_id}/{k}_changed.png", "intended": f"masks/{group_id}/intended.png"},
            "generator": CLASSIC_VERSION if classic else GENERATOR_VERSION,
        }
        if not classic:  # what the generalisation report groups by
            meta.update(failure_family=c.params.get("family", ""), phrasing=group.phrasing, source_kind=source_kind)
        samples.append(EditSample(
            sample_id=f"{group_id}-{k}", source=f"images/{group_id}/source.png", edited=f"images/{group_id}/{k}.png",
            instruction=group.instruction, group_id=group_id, split=split, meta=meta,
        ).model_dump(mode="json"))
    return samples


def _config_key(config: SynthConfig) -> dict[str, Any]:
    """What a group's bytes depend on. Not ``groups``: group ``i`` is the same in a set of 10 or of 10 000, so a
    set can be extended by running again with more groups (the first ones are read back)."""
    key = {"generator": GENERATOR_VERSION, **asdict(config)}
    del key["groups"]
    if config.recipe == "classic":  # exactly the old key: classic sets made before the diverse recipe resume
        key = {k: key[k] for k in ("seed", "candidates", "size", "heldout_fraction")}
        key = {"generator": CLASSIC_VERSION, **key}
    return json.loads(json.dumps(key))  # tuples as lists, as synth.json and group.json hold them


@dataclass(frozen=True)
class SplitRecipe:
    """Where one split's groups come from: photos (by name), rendered scene styles and how often, and the failure
    and phrasing families they may use. ``failures`` / ``phrasings`` None: the classic generator."""

    photos: tuple[str, ...]
    eval_pool: bool = False  # the photo names are `photos.EVAL_POOL_PHOTOS` (matplotlib), not skimage
    scene_styles: tuple[str, ...] = ()
    procedural_fraction: float = 0.0
    failures: FailurePools | None = None
    phrasings: tuple[str, ...] | None = None


def split_recipes(config: SynthConfig, train_photos: tuple[str, ...], heldout_photos: tuple[str, ...],
                  eval_photos: tuple[str, ...]) -> dict[str, SplitRecipe]:
    """Each split's `SplitRecipe`. Training sees no held-out photo, scene style, phrasing or failure family; each
    generalisation split changes exactly one of those factors from the training distribution."""
    if config.recipe == "classic":
        return {"train": SplitRecipe(train_photos), "heldout": SplitRecipe(heldout_photos or train_photos)}
    train_styles = tuple(s for s in SCENE_STYLES if s not in config.heldout_scene_styles)
    phrasings = tuple(p for p in PHRASINGS if p != config.heldout_phrasing)
    seen = FailurePools.split(config.heldout_families, evaluation=False)
    unseen = FailurePools.split(config.heldout_families, evaluation=True)
    base = SplitRecipe(train_photos, scene_styles=train_styles, procedural_fraction=config.procedural_fraction,
                       failures=seen, phrasings=phrasings)
    photos_only = SplitRecipe(heldout_photos or train_photos, failures=seen, phrasings=phrasings)
    if config.layout == "train":
        return {"train": base, "heldout": photos_only}
    if not eval_photos:
        raise DatasetError("the generalisation layout needs matplotlib's sample images for its eval_pool split, "
                           "and none loads here (is matplotlib installed with its sample data?)")
    return {
        "in_distribution": base,
        "heldout_photos": photos_only,
        "heldout_scenes": SplitRecipe((), scene_styles=config.heldout_scene_styles, procedural_fraction=1.0,
                                      failures=seen, phrasings=phrasings),
        "heldout_phrasing": SplitRecipe(train_photos, scene_styles=train_styles,
                                        procedural_fraction=config.procedural_fraction, failures=seen,
                                        phrasings=(config.heldout_phrasing,)),
        "heldout_failures": SplitRecipe(train_photos, scene_styles=train_styles,
                                        procedural_fraction=config.procedural_fraction, failures=unseen,
                                        phrasings=phrasings),
        "eval_pool": SplitRecipe(eval_photos, eval_pool=True, failures=seen, phrasings=phrasings),
    }


def draw_source(rng: np.random.Generator, recipe: SplitRecipe) -> tuple[str, np.ndarray, str]:
    """``(name, RGB uint8 image, source kind)`` of one group: a rendered scene (``scene:<style>``) with
    probability ``procedural_fraction``, else a photo of the recipe's pool."""
    if recipe.failures is None:  # classic: one draw, as synth-v1 made it
        name = recipe.photos[int(rng.integers(len(recipe.photos)))]
        return name, load_photo(name), "photo"
    if recipe.scene_styles and (not recipe.photos or rng.random() < recipe.procedural_fraction):
        style = recipe.scene_styles[int(rng.integers(len(recipe.scene_styles)))]
        return f"scene:{style}", render_scene(rng, style), "scene"
    name = recipe.photos[int(rng.integers(len(recipe.photos)))]
    if recipe.eval_pool:
        return name, load_eval_photo(name), "eval_pool"
    return name, load_photo(name), "photo"


def build_and_write_group(out: str, config: SynthConfig, index: int, group_id: str, split: str,
                          recipe: SplitRecipe) -> tuple[list[dict[str, Any]], bool, float]:
    """Build group ``index`` and write its files. Returns its sample records, whether it was resumed (read back
    from a finished earlier run) and the CPU seconds it took."""
    cpu_start = time.process_time()
    samples, resumed = _build_and_write_group(out, config, index, group_id, split, recipe)
    return samples, resumed, time.process_time() - cpu_start


def _build_and_write_group(out: str, config: SynthConfig, index: int, group_id: str, split: str,
                           recipe: SplitRecipe) -> tuple[list[dict[str, Any]], bool]:
    root = Path(out)
    marker = root / "images" / group_id / "group.json"
    key = _config_key(config)
    if marker.exists():
        try:
            saved = json.loads(marker.read_text())
            if saved.get("config") == key and saved.get("index") == index:
                return saved["samples"], True
        except (OSError, ValueError):
            pass  # a damaged marker: rebuild the group
    rng = np.random.default_rng([config.seed, index])
    photo_name, photo, source_kind = draw_source(rng, recipe)
    group = make_group(rng, photo, size=config.size, candidates=config.candidates, failures=recipe.failures,
                       phrasings=recipe.phrasings)
    _save_png(root / "images" / group_id / "source.png", group.source)
    _save_png(root / "masks" / group_id / "intended.png", group.intended.astype(np.uint8) * 255)
    for k, c in enumerate(group.candidates):
        _save_png(root / "images" / group_id / f"{k}.png", c.image)
        _save_png(root / "masks" / group_id / f"{k}_changed.png", c.changed.astype(np.uint8) * 255)
    samples = _group_samples(group, group_id, split, photo_name, config, source_kind)
    record = {"config": key, "index": index, "samples": samples}
    atomic_write_bytes(marker, json.dumps(record).encode())
    return samples, False


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _check_folder(out: Path, config: SynthConfig, photos: dict[str, list[str]]) -> None:
    """Refuse to resume into a folder made with other settings or from another photo split (photos that loaded
    there do not load here): either would mix two datasets in one folder."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            saved_manifest = json.loads(manifest.read_text())
            saved = saved_manifest.get("config")
        except (ValueError, AttributeError) as exc:
            raise DatasetError(f"{manifest}: unreadable ({exc}); delete it or use another --out") from exc
        if saved != _config_key(config):
            raise DatasetError(
                f"{out} holds a synthetic set made with other settings ({saved}); use another --out, or delete the "
                f"folder to rebuild it with {_config_key(config)}"
            )
        saved_photos = saved_manifest.get("photos")
        if saved_photos is not None and saved_photos != photos:
            diff = {k: sorted(set(saved_photos.get(k, [])) ^ set(photos.get(k, [])))
                    for k in set(saved_photos) | set(photos)}
            raise DatasetError(
                f"{out} was made from another photo split than loads here (differing photos by split: "
                f"{ {k: v for k, v in diff.items() if v} }); load the same photos or use another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not a synthetic set (no {MANIFEST}); use an empty or new folder")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def generate_dataset(
    out: Path,
    groups: int,
    seed: int = 0,
    *,
    candidates: int = 8,
    size: int = 224,
    heldout_fraction: float = 0.2,
    workers: int | None = None,
    progress: bool = True,
    **options: Any,
) -> SynthReport:
    """Write a synthetic edit set of ``groups`` GRPO groups to ``out`` and return what was made.

    Deterministic per ``seed`` (byte-identical ``samples.jsonl`` and images for any ``workers``); resumes an
    interrupted run into the same folder. ``workers`` processes build groups in parallel (default: all cores;
    0 or 1 builds in this process). Workers start by the ``forkserver`` method and re-import the main module, so
    a script calling this with workers > 1 needs the usual ``if __name__ == "__main__":`` guard.
    ``options`` are the other `SynthConfig` fields (``recipe``, ``layout``, ``heldout_families``, …).
    """
    config = SynthConfig(groups=groups, seed=seed, candidates=candidates, size=size,
                         heldout_fraction=heldout_fraction, **options)
    out = Path(out)
    names = available_photos()
    train_photos, heldout_photos = split_photos(names, heldout_fraction)
    eval_photos = available_eval_photos() if config.layout == "generalisation" else ()
    recipes = split_recipes(config, train_photos, heldout_photos, eval_photos)
    photos = {"train": list(train_photos), "heldout": list(heldout_photos)}
    if config.recipe == "diverse":
        photos["eval_pool"] = list(eval_photos)
    _check_folder(out, config, photos)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"config": _config_key(config), "groups": groups, "photos": photos,
                "photos_not_loaded": {n: r for n, r in photo_load_failures().items() if n in SOURCE_PHOTOS}}
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())

    split_counter: Counter[str] = Counter()
    tasks = []
    for i in range(groups):
        split = config.split_of(i)
        group_id = f"{split}-{split_counter[split]:05d}"
        split_counter[split] += 1
        tasks.append((str(out), config, i, group_id, split, recipes[split]))

    workers = default_workers() if workers is None else max(1, workers)
    workers = min(workers, groups)
    start = time.perf_counter()
    results: list[list[dict[str, Any]] | None] = [None] * groups
    resumed, cpu_seconds = 0, 0.0
    with _progress(progress, groups) as advance:
        if workers == 1:
            for i, task in enumerate(tasks):
                results[i], was_resumed, cpu = build_and_write_group(*task)
                resumed, cpu_seconds = resumed + was_resumed, cpu_seconds + cpu
                advance()
        else:
            # forkserver: children start clean (no threads inherited from torch or a test runner), with one BLAS
            # thread each (more only fight over the same cores).
            with _single_thread_env(), ProcessPoolExecutor(max_workers=workers,
                                                           mp_context=get_context("forkserver")) as pool:
                futures = {pool.submit(build_and_write_group, *task): i for i, task in enumerate(tasks)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        results[i], was_resumed, cpu = fut.result()
                    except Exception as exc:
                        raise RuntimeError(f"group {tasks[i][3]} (index {i}, seed {seed}) failed: {exc}") from exc
                    resumed, cpu_seconds = resumed + was_resumed, cpu_seconds + cpu
                    advance()
    samples = [EditSample.model_validate(s) for group in results for s in group]
    write_samples(out, samples)
    seconds = time.perf_counter() - start

    kinds = Counter(s.meta["kind"] for s in samples)
    report = SynthReport(
        out=str(out), groups=groups, samples=len(samples), seconds=round(seconds, 2),
        bytes_on_disk=_dir_bytes(out), kinds=dict(sorted(kinds.items())),
        splits=dict(Counter(s.split for s in samples)), groups_per_split=dict(split_counter),
        operations=dict(sorted(Counter(g[0]["meta"]["operation"] for g in results).items())),
        photos=photos,
        resumed_groups=resumed, workers=workers, cpu_seconds=round(cpu_seconds, 2),
    )
    manifest["counts"] = {"samples": report.samples, "kinds": report.kinds, "splits": report.splits,
                          "groups_per_split": report.groups_per_split, "operations": report.operations}
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    return report


@contextmanager
def _single_thread_env():
    """Worker processes read these when numpy loads; set them (unless the user did) while the pool starts."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.setdefault(n, "1")
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


class _progress:
    """A rich progress bar (or nothing), used as ``with _progress(on, total) as advance: advance()``."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._bar.__enter__()
        task = self._bar.add_task("groups", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
