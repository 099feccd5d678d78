"""One edit to score, checked item by item: decoding, limits, and the per-item error kinds the metrics count.

A request is a list of edits. Each edit is checked on its own (image bytes decode, size within limits, instruction
present and not too long); a failed check becomes that edit's error (`ItemError` with a kind and a message naming
the field), never a batch failure and never a made-up score. Sources are identified by a content hash so that a GRPO
group's source, repeated in every request of the group, is decoded once (`SourceCache`) and encoded once per batch.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from spatialreward.images import ImageLoadError, load_image

# Error kinds (the `kind` label of the errors counter in /metrics).
BAD_IMAGE = "bad_image"
IMAGE_TOO_SMALL = "image_too_small"
IMAGE_TOO_LARGE = "image_too_large"
BAD_INSTRUCTION = "bad_instruction"
MISSING_FIELD = "missing_field"
DEADLINE = "deadline"
INTERNAL = "internal"


class ItemError(ValueError):
    """An edit that cannot be scored: ``kind`` is one of the constants above, the message names the field."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Edit:
    """A checked edit ready for the model (``source`` / ``edited`` are RGB PIL images, or uint8 ``[H, W, 3]``
    frames of a raw body) or an error."""

    source: Image.Image | np.ndarray | None = None
    edited: Image.Image | np.ndarray | None = None
    instruction: str = ""
    source_key: str = ""  # content hash of the source: equal sources share work
    error: ItemError | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def content_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def image_key(image: Image.Image) -> str:
    """Content hash of a decoded image (mode, size and pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def check_size(w: int, h: int, name: str, *, min_side: int, max_pixels: int) -> None:
    """The server's size limits on one image of ``w × h`` pixels."""
    if w * h > max_pixels:
        raise ItemError(IMAGE_TOO_LARGE, f"{name}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
    if min(w, h) < min_side:
        raise ItemError(IMAGE_TOO_SMALL, f"{name}: {w}x{h} is under {min_side} px on a side; it cannot be judged")


def check_image(image: Image.Image, name: str, *, min_side: int, max_pixels: int) -> Image.Image:
    """Size limits on an already decoded image; returns it as RGB."""
    check_size(*image.size, name, min_side=min_side, max_pixels=max_pixels)
    try:
        return load_image(image, name=name, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise ItemError(BAD_IMAGE, str(exc)) from exc


def decode_image(data: bytes, name: str, *, min_side: int, max_pixels: int) -> Image.Image:
    """Encoded image bytes (PNG, JPEG, WebP, ...) → RGB PIL image; the pixel count is checked before decoding."""
    if not data:
        raise ItemError(BAD_IMAGE, f"{name}: empty image bytes")
    try:
        image = load_image(data, name=name, max_pixels=max_pixels)
    except ImageLoadError as exc:
        kind = IMAGE_TOO_LARGE if "pixels" in exc.reason else BAD_IMAGE
        raise ItemError(kind, str(exc)) from exc
    return check_image(image, name, min_side=min_side, max_pixels=max_pixels)


def check_instruction(value: Any, name: str, *, max_chars: int) -> str:
    if value is None:
        raise ItemError(MISSING_FIELD, f"{name}: missing; give the edit instruction as a string")
    if not isinstance(value, str):
        raise ItemError(BAD_INSTRUCTION, f"{name}: expected a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ItemError(BAD_INSTRUCTION, f"{name}: empty instruction")
    if len(text) > max_chars:
        raise ItemError(BAD_INSTRUCTION, f"{name}: {len(text)} characters is over the limit of {max_chars}")
    return text


class SourceCache:
    """Decoded, checked images by content hash (LRU, thread-safe). A GRPO group repeats one source in each of its
    requests; decoding a 512 px PNG costs milliseconds, so the repeats are served from here."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> Image.Image | None:
        with self._lock:
            image = self._items.get(key)
            if image is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return image

    def put(self, key: str, image: Image.Image) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = image
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def decode_source(data: bytes, name: str, cache: SourceCache, *, min_side: int, max_pixels: int) -> tuple[Image.Image, str]:
    key = content_key(data)
    image = cache.get(key)
    if image is None:
        image = decode_image(data, name, min_side=min_side, max_pixels=max_pixels)
        cache.put(key, image)
    return image, key
