"""Source photos: the real images that ship with scikit-image, loaded offline, and random views of them.

`skimage.data` bundles a few dozen photos in the wheel; others (eagle, lily, skin, …) need ``pooch`` and a
download. We list only bundled ones — a download would make the set depend on the machine — and still skip any that
fails to load here (`available_photos`). Grey photos become RGB, RGBA is composited over white,
``stereo_motorcycle`` (a tuple) gives its left view. Three of them (brick, grass, gravel) are textures, not scenes:
they are kept for `textures` and never used as sources.

The held-out split is a *fixed* subset of photo names (`split_photos`), chosen by a hash of the name and not by the
seed, so a photo held out in one synthetic set is held out in every set and never leaks into train. Many distinct
sources come from `random_view`: a random square crop (45–100 % of the short side), a horizontal flip and a resize.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache

import numpy as np
from PIL import Image

# Scenes and objects used as edit sources. `chelsea` is left out: it is the same photo as `cat`, and a photo under
# two names would leak from train into held-out (`available_photos` also drops pixel-identical duplicates).
SOURCE_PHOTOS = (
    "astronaut", "camera", "cat", "coffee", "coins", "rocket", "immunohistochemistry",
    "hubble_deep_field", "retina", "moon", "clock", "page", "text", "cell", "colorwheel", "microaneurysms",
    "logo", "stereo_motorcycle",
)
# Photos that are textures: material fills and backgrounds, never sources.
TEXTURE_PHOTOS = ("brick", "grass", "gravel")


def _to_rgb_uint8(image: object) -> np.ndarray:
    """Any skimage.data image → ``[H, W, 3]`` uint8 (grey stacked, alpha over white, floats scaled)."""
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a.astype(np.float64) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:  # alpha over white, as spatialreward.images does
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = (a[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a[:, :, :3])


# Why each photo that did not load failed (name → "ExceptionType: message"), so a smaller photo set — and with it
# a different train/held-out split — is never silent: `available_photos` warns, and the dataset manifest records it.
_LOAD_FAILURES: dict[str, str] = {}


def photo_load_failures() -> dict[str, str]:
    """Photos that failed to load in this process so far, with the reason."""
    return dict(_LOAD_FAILURES)


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray | None:
    """One skimage photo as RGB uint8, or None when it cannot be loaded offline (cached per process).

    Only ordinary errors (missing file, no ``pooch``, no network) count as "not here"; they are recorded in
    `photo_load_failures`. Anything else — Ctrl-C, ``SystemExit``, a test runner's skip/fail outcome — propagates.
    """
    import skimage.data

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = getattr(skimage.data, name)()
    except Exception as exc:  # noqa: BLE001 — missing file / pooch / network: this photo is not here
        _LOAD_FAILURES[name] = f"{type(exc).__name__}: {exc}"
        return None
    return _to_rgb_uint8(image)


@lru_cache(maxsize=None)
def available_photos(names: tuple[str, ...] = SOURCE_PHOTOS) -> tuple[str, ...]:
    """The names among ``names`` that load offline here, in the given order, without pixel-identical
    duplicates (the first name of a duplicate is kept). Warns, naming each photo and why, when some do not load:
    the held-out split depends on which photos load."""
    kept, seen, missing = [], set(), []
    for n in names:
        photo = load_photo(n)
        if photo is None:
            missing.append(n)
            continue
        digest = hashlib.sha256(photo.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(n)
    if missing:
        reasons = "; ".join(f"{n} ({_LOAD_FAILURES.get(n, 'not loaded')})" for n in missing)
        warnings.warn(f"{len(missing)} of {len(names)} source photos do not load here, so the photo set and the "
                      f"held-out split differ from a full install: {reasons}", RuntimeWarning, stacklevel=2)
    return tuple(kept)


def split_photos(names: tuple[str, ...], heldout_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train, heldout)`` photo names. The held-out ones are the first ``round(fraction · n)`` names by SHA-256.

    Hash order makes the split independent of the seed (it depends only on which photos load, i.e. on the
    scikit-image install). With a fraction above 0, at least one photo is held out and one stays for training.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must be in [0, 1)")
    if len(names) < 2 and heldout_fraction > 0:
        raise ValueError(f"need at least 2 source photos to hold some out, have {len(names)}: {names}")
    k = int(round(heldout_fraction * len(names)))
    if heldout_fraction > 0:
        k = min(max(k, 1), len(names) - 1)
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    heldout = set(ranked[:k])
    return tuple(n for n in names if n not in heldout), tuple(n for n in names if n in heldout)


def random_view(rng: np.random.Generator, photo: np.ndarray, size: int, *, min_scale: float = 0.45) -> np.ndarray:
    """A random square crop of ``photo`` (``min_scale``–100 % of its short side), maybe mirrored, resized to
    ``size×size``. Returns float32 ``[size, size, 3]`` in [0, 1]."""
    h, w = photo.shape[:2]
    side = int(round(min(h, w) * rng.uniform(min_scale, 1.0)))
    side = max(side, min(h, w, 16))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    view = crop.resize((size, size), Image.Resampling.BILINEAR if side > size else Image.Resampling.BICUBIC)
    return np.asarray(view, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------------
# The evaluation-only pool: images another package ships, never used for training
# ---------------------------------------------------------------------------------------------------------------

# Name → how to read it from matplotlib's bundled sample data (`matplotlib.cbook.get_sample_data`). Elevation maps
# become images through a colour map and hill shading, as a plotting user would see them.
EVAL_POOL_PHOTOS = ("mpl:grace_hopper", "mpl:minduka", "mpl:mri", "mpl:jacksboro", "mpl:topobathy")


def _relief(elevation: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib
    from matplotlib.colors import LightSource

    z = np.asarray(elevation, np.float64)
    rgb = LightSource(azdeg=315, altdeg=45).shade(z, cmap=matplotlib.colormaps[cmap], blend_mode="soft")
    return (np.clip(rgb[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)


@lru_cache(maxsize=None)
def load_eval_photo(name: str) -> np.ndarray | None:
    """One evaluation-only image (a name of `EVAL_POOL_PHOTOS`) as RGB uint8, or None when it cannot be read."""
    try:
        import matplotlib.cbook as cbook

        if name == "mpl:grace_hopper":
            with cbook.get_sample_data("grace_hopper.jpg") as f:
                return _to_rgb_uint8(np.asarray(Image.open(f).convert("RGB")))
        if name == "mpl:minduka":
            with cbook.get_sample_data("Minduka_Present_Blue_Pack.png") as f:
                return _to_rgb_uint8(np.asarray(Image.open(f).convert("RGBA")))
        if name == "mpl:mri":
            with cbook.get_sample_data("s1045.ima.gz") as f:
                raw = np.frombuffer(f.read(), np.uint16).astype(np.float32).reshape(256, 256)
            return _to_rgb_uint8((raw / max(float(raw.max()), 1.0) * 255).astype(np.uint8))
        if name == "mpl:jacksboro":
            return _relief(cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"], "gist_earth")
        if name == "mpl:topobathy":
            return _relief(cbook.get_sample_data("topobathy.npz")["topo"], "terrain")
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001 — a matplotlib without its sample data: the pool is smaller
        return None
    raise ValueError(f"unknown evaluation-pool image {name!r}; known: {', '.join(EVAL_POOL_PHOTOS)}")


@lru_cache(maxsize=None)
def available_eval_photos() -> tuple[str, ...]:
    """The evaluation-only images that load here."""
    return tuple(n for n in EVAL_POOL_PHOTOS if load_eval_photo(n) is not None)
