"""The binary body of ``POST /v1/score``: a JSON header followed by raw RGB frames, no image codec and no base64.

Why: on loopback or a fast network the cost of a reward request is not the bytes but turning pixels into text and
back. PNG costs ~10 ms per 512 px image to encode, base64 + JSON another third again; the model call it serves costs
a few ms per edit on a CPU and far less on a GPU. Raw frames cost a memory copy on each side.

Layout (``Content-Type: application/x-spatialreward-frames``)::

    b"SRF1" | uint32 little-endian n = header length | n bytes of UTF-8 JSON header | frame 0 | frame 1 | ...

The header is the JSON request of ``/v1/score`` with every image replaced by ``{"frame": k}``, plus ``"frames":
[[h, w], ...]``: frame ``k`` is ``h·w·3`` bytes of uint8 RGB, row-major, and the frames follow one another in order
(their offsets follow from the shapes, so a body cannot point outside itself). The sizes must add up to the body
exactly; anything else is a 400 that names the problem. Frames are never unpickled or decoded by a codec.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

CONTENT_TYPE = "application/x-spatialreward-frames"
MAGIC = b"SRF1"
_PREFIX = struct.Struct("<4sI")
MAX_HEADER_BYTES = 64 * 1024 * 1024


class FramesError(ValueError):
    """A body that is not a valid frames request (a request-level 400)."""


def encode_frames(header: dict[str, Any], frames: Sequence[np.ndarray]) -> bytes:
    """``header`` (images already replaced by ``{"frame": k}``) and uint8 ``[H, W, 3]`` frames → one body."""
    shapes = []
    for k, f in enumerate(frames):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {k}: expected uint8 [H, W, 3], got {f.dtype} {list(f.shape)}")
        shapes.append([int(f.shape[0]), int(f.shape[1])])
    head = json.dumps({**header, "frames": shapes}, allow_nan=False).encode()
    return b"".join([_PREFIX.pack(MAGIC, len(head)), head, *(np.ascontiguousarray(f).data for f in frames)])


def decode_frames(body: bytes, *, max_frames: int, max_pixels: int) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A body → ``(header, frames)``; frames are read-only ``[H, W, 3]`` uint8 views into ``body`` (no copy).

    A frame over ``max_pixels`` is refused here, before the header's sizes are trusted for anything."""
    if len(body) < _PREFIX.size:
        raise FramesError(f"frames body of {len(body)} bytes is shorter than its {_PREFIX.size}-byte prefix")
    magic, n = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise FramesError(f"frames body starts with {magic!r}, not {MAGIC!r}")
    if n > min(MAX_HEADER_BYTES, len(body) - _PREFIX.size):
        raise FramesError(f"frames header length {n} runs past the body ({len(body)} bytes)")
    try:
        header = json.loads(body[_PREFIX.size:_PREFIX.size + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FramesError(f"frames header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise FramesError("frames header must be a JSON object")
    shapes = header.pop("frames", None)
    if not isinstance(shapes, list) or len(shapes) > max_frames:
        raise FramesError(f'frames header needs a "frames" list of [h, w] of at most {max_frames} entries')
    view = memoryview(body)
    offset, frames = _PREFIX.size + n, []
    for k, shape in enumerate(shapes):
        if (not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise FramesError(f"frames[{k}]: expected [height, width] as positive integers, got {shape!r}")
        h, w = shape
        if h * w > max_pixels:
            raise FramesError(f"frames[{k}]: {w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
        size = h * w * 3
        if offset + size > len(body):
            raise FramesError(f"frames[{k}] ({w}x{h} RGB, {size} bytes) runs past the end of the body")
        frames.append(np.frombuffer(view[offset:offset + size], dtype=np.uint8).reshape(h, w, 3))
        offset += size
    if offset != len(body):
        raise FramesError(f"{len(body) - offset} bytes after the last frame; the frame sizes must add up to the body")
    return header, frames
