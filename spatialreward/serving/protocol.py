"""The SpatialReward / EditScore reward-server protocol, decoded without executing anything.

Upstream (github.com/lorangan-ddup/SpatialReward, ``example/reward/server``) clients POST a pickled dict
``{"input_images": [[PIL source, ...], ...], "output_image": [PIL edited, ...], "meta_datas": [dict | JSON str with
"instruction"], "server_type": str}`` and read back a pickled dict of ``scores``, ``rewards``, ``reasoning``,
``strict_rewards`` and ``meta_data``. ``pickle.loads`` on such a body runs whatever code the sender chose, so this
module never calls it. `restricted_loads` accepts only what the protocol needs — dicts, lists, tuples, str, bytes,
numbers, booleans, None, and PIL images as PIL pickles them — in two steps:

1. **A static scan of the opcodes** (`pickletools.genops`, which only parses) before anything is unpickled: an
   opcode that calls a function (``REDUCE``, ``INST``, ``OBJ``, ``NEWOBJ_EX``), an extension or persistent id, an
   out-of-band buffer, or a global other than a PIL image class rejects the body. Every ``__reduce__`` payload
   (``os.system``, ``subprocess.Popen``, ``builtins.eval`` ...) needs one of these, so it is refused before a single
   object is built.
2. **Unpickling with a stand-in class**: the PIL image globals resolve to `_PickledImage`, which only records the
   state PIL would restore (mode, size, palette, pixel bytes); no module is imported. Each image is then checked
   (mode, pixel count) and built with ``Image.frombytes`` — so an image claiming 10⁵ × 10⁵ pixels is an error, not
   a 30 GB allocation.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools
import re
from typing import Any

from PIL import Image

from spatialreward.serving.items import (
    BAD_IMAGE,
    IMAGE_TOO_LARGE,
    MISSING_FIELD,
    Edit,
    ItemError,
    SourceCache,
    check_image,
    check_instruction,
    image_key,
)
from spatialreward.serving.worker import ItemResult


class ProtocolError(ValueError):
    """The body is not a valid protocol request (→ HTTP 400 with this message)."""


# -- restricted unpickling ---------------------------------------------------------------------------------------

# Opcodes that only push data or shape containers. Anything else is refused, except the globals and NEWOBJ/BUILD
# checked below (protocol 2+ pickles a PIL image as STACK_GLOBAL "PIL.Image" "Image", NEWOBJ, then BUILD(state)).
_DATA_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8
    EMPTY_LIST APPEND APPENDS LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS
    PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET
""".split())
_STRING_OPCODES = frozenset("STRING BINSTRING SHORT_BINSTRING UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8".split())
# PIL pickles `Image.Image` and its file subclasses (PngImageFile, JpegImageFile, ...) the same way.
_IMAGE_PLUGIN = re.compile(r"PIL\.[A-Za-z0-9]+ImagePlugin")
_IMAGE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F",
                          "I;16", "I;16B", "I;16L"})


def _is_image_class(module: str, name: str) -> bool:
    if module == "PIL.Image" and name == "Image":
        return True
    return bool(_IMAGE_PLUGIN.fullmatch(module)) and name.endswith("ImageFile") and name.isidentifier()


class _PickledImage:
    """Stand-in for a pickled PIL image: keeps the state PIL's ``__setstate__`` would apply, builds nothing."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def scan_pickle(data: bytes) -> None:
    """Refuse a pickle that could call anything (see the module docstring); reads opcodes, builds nothing."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # the values of recent pushes, enough to know what STACK_GLOBAL would look up
    memo_count = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPCODES:
                pushed.append(arg)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif name == "MEMOIZE":
                memo[memo_count] = pushed[-1] if pushed else None
                memo_count += 1
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                if not _is_image_class(module, attr):
                    raise ProtocolError(f"pickle refers to {module}.{attr} at byte {pos}; only PIL images, "
                                        "containers, strings, bytes and numbers are accepted")
                pushed.append(("global", module, attr))
            elif name == "STACK_GLOBAL":
                module, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                if not (isinstance(module, str) and isinstance(attr, str) and _is_image_class(module, attr)):
                    raise ProtocolError(f"pickle refers to {module}.{attr} at byte {pos}; only PIL images, "
                                        "containers, strings, bytes and numbers are accepted")
                pushed.append(("global", module, attr))
            elif name in ("NEWOBJ", "BUILD"):
                pushed.append(None)
            elif name in _DATA_OPCODES:
                if name not in ("PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK"):
                    pushed.append(None)
            else:
                raise ProtocolError(f"pickle opcode {name} at byte {pos} is not accepted (it can call code); send "
                                    "only PIL images, containers, strings, bytes and numbers")
            if len(pushed) > 8:
                del pushed[:-8]
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or garbage bytes
        raise ProtocolError(f"body is not a valid pickle ({type(exc).__name__}: {exc})") from exc


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # defence in depth: the scan already refused other globals
        if _is_image_class(module, name):
            return _PickledImage
        raise pickle.UnpicklingError(f"global {module}.{name} is not accepted")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not accepted")


def restricted_loads(data: bytes, *, max_pixels: int) -> Any:
    """Unpickle a protocol body safely; PIL images come back as real `PIL.Image.Image`s, or as `ItemError`s when
    their state is bad (wrong mode, too many pixels, short pixel data) so that only that item fails."""
    scan_pickle(data)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # noqa: BLE001
        raise ProtocolError(f"body is not a valid pickle ({type(exc).__name__}: {exc})") from exc
    return _build_images(obj, max_pixels, depth=0)


def _build_images(obj: Any, max_pixels: int, depth: int) -> Any:
    if depth > 8:
        raise ProtocolError("request nests containers more than 8 deep")
    if isinstance(obj, _PickledImage):
        return _image_from_state(obj.state, max_pixels)
    if isinstance(obj, list):
        return [_build_images(v, max_pixels, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_build_images(v, max_pixels, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return {k: _build_images(v, max_pixels, depth + 1) for k, v in obj.items()}
    return obj


def _image_from_state(state: Any, max_pixels: int) -> Image.Image | ItemError:
    try:
        info, mode, size, palette, data = state[:5]
        if mode not in _IMAGE_MODES:
            return ItemError(BAD_IMAGE, f"pickled image mode {mode!r} is not accepted")
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            return ItemError(BAD_IMAGE, f"pickled image has size {w}x{h}")
        if w * h > max_pixels:
            return ItemError(IMAGE_TOO_LARGE, f"pickled image {w}x{h} = {w * h} pixels is over the limit of "
                                              f"{max_pixels}")
        if not isinstance(data, (bytes, bytearray)):
            return ItemError(BAD_IMAGE, "pickled image carries no pixel bytes")
        image = Image.frombytes(mode, (w, h), bytes(data))
        if mode in ("P", "PA") and palette:
            image.putpalette(palette)
        return image
    except Exception as exc:  # noqa: BLE001 - short data, wrong types
        return ItemError(BAD_IMAGE, f"pickled image state is not valid ({type(exc).__name__}: {exc})")


# -- request → edits ---------------------------------------------------------------------------------------------

def parse_request(body: Any, *, cache: SourceCache, max_items: int, min_side: int, max_pixels: int,
                  max_instruction_chars: int) -> tuple[list[Edit], list[dict]]:
    """A decoded protocol body → one `Edit` per output image (errors per item) and the meta dicts to echo."""
    if not isinstance(body, dict):
        raise ProtocolError(f"body must be a pickled dict, got {type(body).__name__}")
    missing = [k for k in ("input_images", "output_image") if k not in body]
    metas_raw = body.get("meta_datas", body.get("meta_data"))  # clients send meta_datas; the proxy sends meta_data
    if metas_raw is None:
        missing.append("meta_datas")
    if missing:
        raise ProtocolError(f"request lacks {', '.join(missing)}; expected input_images, output_image, meta_datas")
    inputs, outputs = body["input_images"], body["output_image"]
    for key, value in (("input_images", inputs), ("output_image", outputs), ("meta_datas", metas_raw)):
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"{key} must be a list, got {type(value).__name__}")
    n = len(outputs)
    if len(inputs) != n or len(metas_raw) != n:
        raise ProtocolError(f"got {len(inputs)} input_images, {n} output_image and {len(metas_raw)} meta_datas; "
                            "send one of each per edit")
    if n > max_items:
        raise ProtocolError(f"{n} edits in one request is over the limit of {max_items}; split the request")
    edits, metas = [], []
    for i in range(n):
        meta, meta_error = _parse_meta(metas_raw[i], i)
        meta["original_index"] = i
        metas.append(meta)
        edit = Edit()
        try:
            if meta_error:
                raise meta_error
            edit.instruction = check_instruction(meta.get("instruction"), f"meta_datas[{i}].instruction",
                                                 max_chars=max_instruction_chars)
            edit.source, edit.source_key = _source_of(inputs[i], i, cache, min_side, max_pixels)
            edit.edited = _as_image(outputs[i], f"output_image[{i}]", min_side, max_pixels)
        except ItemError as err:
            edit = Edit(error=err)
        edits.append(edit)
    return edits, metas


def _parse_meta(raw: Any, i: int) -> tuple[dict, ItemError | None]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = {"instruction": raw}  # upstream's worker takes a plain string as the instruction
    if not isinstance(raw, dict):
        return {}, ItemError(MISSING_FIELD, f"meta_datas[{i}]: expected a dict or a JSON string, got "
                                            f"{type(raw).__name__}")
    return dict(raw), None


def _as_image(value: Any, name: str, min_side: int, max_pixels: int) -> Image.Image:
    if isinstance(value, ItemError):
        raise ItemError(value.kind, f"{name}: {value}")
    if isinstance(value, (bytes, bytearray)):
        from spatialreward.serving.items import decode_image

        return decode_image(bytes(value), name, min_side=min_side, max_pixels=max_pixels)
    if not isinstance(value, Image.Image):
        raise ItemError(BAD_IMAGE, f"{name}: expected a PIL image or image bytes, got {type(value).__name__}")
    return check_image(value, name, min_side=min_side, max_pixels=max_pixels)


def _source_of(value: Any, i: int, cache: SourceCache, min_side: int, max_pixels: int) -> tuple[Image.Image, str]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ItemError(MISSING_FIELD, f"input_images[{i}]: empty list; the source image comes first")
        value = value[0]  # the source first; further reference images are not used by the student
    name = f"input_images[{i}][0]"
    image = _as_image(value, name, min_side, max_pixels)
    key = image_key(image)
    cached = cache.get(key)
    if cached is not None:
        return cached, key
    cache.put(key, image)
    return image, key


# -- results → response ------------------------------------------------------------------------------------------

SUBSCORE_LABELS = ("instruction following", "consistency", "naturalness", "artifacts")


def reasoning_text(result: ItemResult) -> str:
    """A short, honest explanation built from what the student predicted (it writes no free text)."""
    if not result.ok:
        return f"error: {result.error}"
    parts = ", ".join(f"{label} {v:.1f}/25" for label, v in zip(SUBSCORE_LABELS, result.subscores))
    if result.boxes:
        regions = "; ".join("[" + ", ".join(f"{v:.0f}" for v in b) + "]" for b in result.boxes[:4])
        where = f"edited region{'s' if len(result.boxes) > 1 else ''} (0-1000): {regions}"
    else:
        where = "no visible edit region"
    return f"{where}. {parts}. reward {result.reward:.3f}"


def build_response(results: list[ItemResult], metas: list[dict]) -> dict:
    """Protocol response in request order; a failed edit has NaN reward and score and an ``error`` in its meta."""
    scores, rewards, reasoning, out_metas = [], [], [], []
    for result, meta in zip(results, metas):
        meta = dict(meta)
        if result.ok:
            reward = float(result.reward)
            scores.append(1.0 if reward >= 0.5 else 0.0)
            rewards.append(reward)
            meta["subscores"] = [float(v) for v in result.subscores]
            meta["boxes"] = result.boxes
        else:
            scores.append(math.nan)
            rewards.append(math.nan)
            meta["error"] = result.error
            meta["error_kind"] = result.error_kind
        reasoning.append(reasoning_text(result))
        out_metas.append(meta)
    return {"scores": scores, "rewards": rewards, "reasoning": reasoning, "strict_rewards": list(rewards),
            "meta_data": out_metas}
