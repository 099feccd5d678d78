"""`RewardClient`: the HTTP client of ``POST /v1/score`` (sync and async), with bounded retries and a deadline.

    client = RewardClient("http://127.0.0.1:23456", token=None)
    results = client.score(sources, editeds, instructions)   # one dict per edit, in order; ok / error per item

Images may be PIL, numpy HWC, torch CHW, encoded bytes or paths. ``image_format="raw"`` sends their pixels as frames
of a binary body (no codec, no base64: the cheapest on loopback and fast networks); ``"png"`` (the default, compact
over slow links) and ``"bmp"`` send base64 JSON (bytes and paths go as they are). Retries happen only where a retry can help — connection errors, 502/503/504 (honouring Retry-After) —
with exponential backoff, never past ``deadline_s`` for the whole call; a 4xx is the caller's mistake and raises at
once. When retries run out, `RewardServerError` says what happened on each attempt: a failure is never turned into
a reward.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from spatialreward.serving.frames import CONTENT_TYPE as FRAMES_CONTENT_TYPE
from spatialreward.serving.frames import encode_frames

RETRY_STATUS = (502, 503, 504)


class RewardServerError(RuntimeError):
    """The server could not give an answer (after retries) or refused the request."""


IMAGE_FORMATS = ("png", "bmp", "raw")


def _check_lengths(sources, editeds, instructions) -> int:
    """The number of edits, once the three lists agree on it."""
    n = len(editeds)
    if not (len(sources) == n == len(instructions)):
        raise ValueError(f"got {len(sources)} sources, {n} edited images and {len(instructions)} instructions; "
                         "pass one of each per edit")
    return n


def _used_sources(sources: list, items: list[dict]) -> tuple[list, list[dict]]:
    """Only the sources ``items`` point at (``source_index``), re-indexed in order; items with their own source
    pass as they are."""
    used = sorted({it["source_index"] for it in items if "source_index" in it})
    if used == list(range(len(sources))):  # all of them, in place
        return sources, items
    remap = {old: new for new, old in enumerate(used)}
    return ([sources[j] for j in used],
            [{**it, "source_index": remap[it["source_index"]]} if "source_index" in it else it for it in items])


def encode_image(item: Any, image_format: str = "png") -> bytes:
    """An image in any form `spatialreward.images.load_image` takes → bytes to send (encoded bytes and files go as
    they are). ``png`` is lossless and compact (compress level 1); ``bmp`` is lossless and uncompressed, ~8x faster
    to encode and decode than PNG at 512 px. ``raw`` (`image_value`) skips encoding altogether: pixels go as frames
    of a binary body — the cheapest on loopback and fast networks, where bandwidth is free."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, Path)):
        return Path(item).read_bytes()
    from spatialreward.images import load_image

    buf = io.BytesIO()
    if image_format == "bmp":
        load_image(item).save(buf, format="BMP")
    else:
        load_image(item).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def b64_image(item: Any, image_format: str = "png") -> str:
    return base64.b64encode(encode_image(item, image_format)).decode()


def image_value(item: Any, image_format: str, side: int | None = None) -> str | np.ndarray:
    """What one image becomes in a request being built: base64 text (``png`` / ``bmp``), or the uint8 ``[H, W, 3]``
    pixels themselves (``raw``: sent as a frame of the binary body, `spatialreward.serving.frames`). With ``side``
    (raw only) the pixels are first resized to the model's side with the server's own resize
    (`spatialreward.images.model_side_pixels`): the same reward, a fraction of the bytes."""
    if image_format != "raw":
        return b64_image(item, image_format)
    from spatialreward.images import load_image, model_side_pixels

    if side is None and isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 \
            and item.shape[2] == 3:
        return item
    image = load_image(item)
    return model_side_pixels(image, side) if side else np.asarray(image)


def serialise(payload: dict) -> tuple[bytes, str]:
    """A request → ``(body, content type)``: JSON, or the binary frames body when its images are pixel arrays."""
    frames: list[np.ndarray] = []

    def ref(value):
        if isinstance(value, np.ndarray):
            frames.append(value)
            return {"frame": len(frames) - 1}
        return value

    header = dict(payload)
    if "sources" in payload:  # sources first: frame k of a request is its k-th source while k < len(sources)
        header["sources"] = [ref(v) for v in payload["sources"]]
    header["items"] = [{k: ref(v) for k, v in it.items()} for it in payload["items"]]
    if not frames:
        return json.dumps(payload).encode(), "application/json"
    return encode_frames(header, frames), FRAMES_CONTENT_TYPE


@contextlib.asynccontextmanager
async def _borrowed(client: httpx.AsyncClient):
    """The caller's client, used without closing it."""
    yield client


class RewardClient:
    """Client of one server. ``timeout_s`` bounds one HTTP attempt, ``deadline_s`` the whole call with retries."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 120.0, deadline_s: float = 300.0,
                 retries: int = 3, backoff_s: float = 0.5, max_items_per_request: int = 256,
                 image_format: str = "png", resize: bool = True):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format={image_format!r}; use one of {IMAGE_FORMATS}")
        self.image_format = image_format
        self.resize = resize  # raw only: send pixels at the model's side (asked of the server's /health once)
        self._side: int | None | bool = False  # False: not asked yet; None: the server did not say
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.retries, self.backoff_s = retries, backoff_s
        self.max_items_per_request = max_items_per_request
        self._client: httpx.Client | None = None

    # -- payloads --------------------------------------------------------------------------------------------------

    @staticmethod
    def payload(sources: Sequence[Any], editeds: Sequence[Any], instructions: Sequence[str],
                group_ids: Sequence[Any] | None = None, *, return_mask: bool = False) -> dict:
        """The JSON body for these edits; raises on an image that cannot be encoded (`score` flags it instead)."""
        body, _ = RewardClient._encode(sources, editeds, instructions, group_ids, return_mask, strict=True)
        return body

    @staticmethod
    def _encode(sources, editeds, instructions, group_ids, return_mask: bool, *, strict: bool = False,
                image_format: str = "png", side: int | None = None, offset: int = 0) -> tuple[dict, dict[int, dict]]:
        """Encode each edit; with ``strict=False`` an unreadable image becomes that edit's local error result
        (``failed[i]``, named by its position ``offset + i`` in the caller's call) and the edit is left out of the
        body, so one bad image never sinks the request."""
        from spatialreward.images import ImageLoadError, map_images

        n = _check_lengths(sources, editeds, instructions)
        # a group's repeated source object is encoded and sent once: items point into "sources" by index
        source_index: dict[int, int] = {}
        unique_sources: list[Any] = []
        for src in sources:
            if id(src) not in source_index:
                source_index[id(src)] = len(unique_sources)
                unique_sources.append(src)

        def value(item: Any) -> Any:  # the image's value in the body, or the exception that stopped it
            try:
                return image_value(item, image_format, side)
            except (ImageLoadError, OSError) as exc:
                if strict:
                    raise
                return exc

        values = map_images(value, [*unique_sources, *editeds])  # decode + resize release the GIL: in parallel
        source_list, edited_values = values[:len(unique_sources)], values[len(unique_sources):]
        items, failed = [], {}
        for i in range(n):
            k = source_index[id(sources[i])]
            exc = next((v for v in (source_list[k], edited_values[i]) if isinstance(v, Exception)), None)
            if exc is not None:
                group_id = group_ids[i] if group_ids is not None else None
                failed[i] = {"index": i + offset, "id": None, "group_id": group_id,
                             "ok": False, "reward": None, "subscores": None, "uncertainty": None, "presence": None,
                             "novelty": None, "boxes": None, "error": f"item {i + offset}: {exc}",
                             "error_kind": "bad_image"}
                continue
            item = {"source_index": k, "edited": edited_values[i], "instruction": instructions[i]}
            if group_ids is not None:
                item["group_id"] = group_ids[i]
            items.append(item)
        source_list, items = _used_sources(source_list, items)  # a source whose edits all failed is not sent
        return {"sources": source_list, "items": items, "return_mask": return_mask}, failed

    @staticmethod
    def _merge(n: int, sent: list[dict], failed: dict[int, dict], offset: int = 0) -> list[dict]:
        """Results of the sent edits and the local failures of one part, back in the caller's order (``index`` =
        position in the whole call: the part's own position plus ``offset``)."""
        it = iter(sent)
        return [failed[i] if i in failed else dict(next(it), index=i + offset) for i in range(n)]

    def _parts(self, sources, editeds, instructions) -> list[slice]:
        """The call split into requests of at most ``max_items_per_request`` edits (at least one, maybe empty)."""
        n = _check_lengths(sources, editeds, instructions)
        k = max(1, self.max_items_per_request)
        return [slice(i, min(i + k, n)) for i in range(0, n, k)] or [slice(0, 0)]

    def _encode_part(self, part: slice, sources, editeds, instructions, group_ids, return_mask: bool,
                     side: int | None) -> tuple[dict, dict[int, dict]]:
        """`_encode` of the edits in ``part`` (a request's body carries only the sources its edits use)."""
        return self._encode(sources[part], editeds[part], instructions[part],
                            group_ids[part] if group_ids is not None else None, return_mask,
                            image_format=self.image_format, side=side, offset=part.start)

    def _chunks(self, payload: dict) -> list[dict]:
        """Requests of at most ``max_items_per_request`` edits, each carrying only the sources its items use."""
        items, k = payload["items"], self.max_items_per_request
        if len(items) <= k:
            return [payload]
        sources, chunks = payload.get("sources"), []
        for start in range(0, len(items), k):
            part = items[start:start + k]
            if sources is not None:
                part_sources, part = _used_sources(sources, part)
                chunks.append({**payload, "sources": part_sources, "items": part})
            else:
                chunks.append({**payload, "items": part})
        return chunks

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and response.headers.get("retry-after", "").isdigit():
            return min(float(response.headers["retry-after"]), 30.0)
        return self.backoff_s * (2 ** attempt) * (0.5 + random.random())

    @staticmethod
    def _fail(response: httpx.Response) -> RewardServerError:
        try:
            detail = response.json().get("error", response.text[:300])
        except ValueError:
            detail = response.text[:300]
        return RewardServerError(f"HTTP {response.status_code} from the reward server: {detail}")

    # -- sync ------------------------------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s, headers=self.headers)
        return self._client

    def post(self, payload: dict) -> list[dict]:
        """POST one or more chunks; returns every item's result dict in order."""
        deadline = time.monotonic() + self.deadline_s
        return [r for chunk in self._chunks(payload) for r in self._post_one(chunk, deadline)]

    def _post_one(self, payload: dict, deadline: float) -> list[dict]:
        problems = []
        body, content_type = serialise(payload)  # once: a retry resends the same bytes
        for attempt in range(self.retries + 1):
            response = None
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                response = self._http().post(f"{self.url}/v1/score", content=body,
                                             headers={"content-type": content_type}, timeout=min(self.timeout_s, left))
            except httpx.TransportError as exc:
                problems.append(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
            else:
                if response.status_code == 200:
                    return response.json()["results"]
                if response.status_code not in RETRY_STATUS:
                    raise self._fail(response)
                problems.append(f"attempt {attempt + 1}: HTTP {response.status_code}")
            if attempt < self.retries:
                time.sleep(max(0.0, min(self._delay(attempt, response), deadline - time.monotonic())))
        raise RewardServerError(f"no answer from {self.url} within {self.retries + 1} attempts / {self.deadline_s} s: "
                                + "; ".join(problems or ["deadline passed"]))

    def _must_ask_side(self) -> bool:
        return self.image_format == "raw" and self.resize and self._side is False

    def _side_known(self) -> int | None:
        return self._side if self._side is not False else None

    def _remember_side(self, response: httpx.Response) -> None:
        """Keep ``input_size`` from a ``/health`` answer; an unreadable answer is not kept (asked again next call):
        full-resolution frames are always correct."""
        try:
            self._side = response.json().get("input_size")
        except (ValueError, AttributeError):
            pass

    def model_side(self) -> int | None:
        """The side the server's model takes (its ``/health``), asked once; None when raw pixels go as they are."""
        if self._must_ask_side():
            try:
                self._remember_side(self._http().get(f"{self.url}/health", timeout=min(self.timeout_s, 10)))
            except httpx.HTTPError:
                pass
        return self._side_known()  # never asked (not raw, or resize off): None

    def score(self, sources, editeds, instructions, group_ids=None, *, return_mask: bool = False) -> list[dict]:
        """One result dict per edit, in order; an edit whose image cannot even be encoded here is flagged like a
        server-side failure (``ok: False``, ``error_kind: "bad_image"``).

        More edits than ``max_items_per_request`` go as several requests, pipelined: the next part is decoded and
        resized here while the server scores the current one."""
        parts = self._parts(sources, editeds, instructions)
        side = self.model_side()
        deadline = time.monotonic() + self.deadline_s
        out: list[dict] = []
        with ThreadPoolExecutor(1, thread_name_prefix="spatialreward-client-encode") as encoder:
            pending = encoder.submit(self._encode_part, parts[0], sources, editeds, instructions, group_ids,
                                     return_mask, side)
            for k, part in enumerate(parts):
                body, failed = pending.result()
                if k + 1 < len(parts):
                    pending = encoder.submit(self._encode_part, parts[k + 1], sources, editeds, instructions,
                                             group_ids, return_mask, side)
                sent = self._post_one(body, deadline) if body["items"] else []
                out += self._merge(len(editeds[part]), sent, failed, offset=part.start)
        return out

    def ping(self) -> bool:
        try:
            return self._http().get(f"{self.url}/ping", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- async -----------------------------------------------------------------------------------------------------

    async def apost(self, payload: dict, client: httpx.AsyncClient | None = None) -> list[dict]:
        """Async `post`. Pass an ``httpx.AsyncClient`` to reuse connections across calls."""
        own = client is None
        client = client or httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers)
        try:
            deadline = time.monotonic() + self.deadline_s
            out = []
            for chunk in self._chunks(payload):
                out.extend(await self._apost_one(client, chunk, deadline))
            return out
        finally:
            if own:
                await client.aclose()

    async def _apost_one(self, client: httpx.AsyncClient, payload: dict, deadline: float) -> list[dict]:
        problems = []
        body, content_type = serialise(payload)
        for attempt in range(self.retries + 1):
            response = None
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                response = await client.post(f"{self.url}/v1/score", content=body,
                                             headers={**self.headers, "content-type": content_type},
                                             timeout=min(self.timeout_s, left))
            except httpx.TransportError as exc:
                problems.append(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
            else:
                if response.status_code == 200:
                    return response.json()["results"]
                if response.status_code not in RETRY_STATUS:
                    raise self._fail(response)
                problems.append(f"attempt {attempt + 1}: HTTP {response.status_code}")
            if attempt < self.retries:
                await asyncio.sleep(max(0.0, min(self._delay(attempt, response), deadline - time.monotonic())))
        raise RewardServerError(f"no answer from {self.url} within {self.retries + 1} attempts / {self.deadline_s} s: "
                                + "; ".join(problems or ["deadline passed"]))

    async def amodel_side(self, client: httpx.AsyncClient | None = None) -> int | None:
        """Async `model_side`."""
        if self._must_ask_side():
            try:
                async with httpx.AsyncClient(headers=self.headers) if client is None else _borrowed(client) as http:
                    self._remember_side(await http.get(f"{self.url}/health", timeout=min(self.timeout_s, 10)))
            except httpx.HTTPError:
                pass
        return self._side_known()  # never asked (not raw, or resize off): None

    async def ascore(self, sources, editeds, instructions, group_ids=None, *, return_mask: bool = False,
                     client: httpx.AsyncClient | None = None) -> list[dict]:
        """Async `score`: the same parts, the next one encoded in a thread while the current one is scored."""
        parts = self._parts(sources, editeds, instructions)
        side = await self.amodel_side(client)
        deadline = time.monotonic() + self.deadline_s
        own = client is None
        http = client or httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers)
        out: list[dict] = []
        try:
            pending = asyncio.ensure_future(asyncio.to_thread(
                self._encode_part, parts[0], sources, editeds, instructions, group_ids, return_mask, side))
            for k, part in enumerate(parts):
                body, failed = await pending
                if k + 1 < len(parts):
                    pending = asyncio.ensure_future(asyncio.to_thread(
                        self._encode_part, parts[k + 1], sources, editeds, instructions, group_ids, return_mask, side))
                sent = await self._apost_one(http, body, deadline) if body["items"] else []
                out += self._merge(len(editeds[part]), sent, failed, offset=part.start)
        finally:
            if not pending.done():
                pending.cancel()
            if own:
                await http.aclose()
        return out
