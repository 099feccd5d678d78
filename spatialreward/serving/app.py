"""The ASGI app: routes over one `ModelWorker`.

    POST /v1/score   JSON: {"items": [{"source": b64 | "source_index": int, "edited": b64, "instruction": str,
                                       "group_id"?, "id"?}], "sources"?: [b64] (what source_index points into:
                            a group's source sent once), "source"?, "instruction"? (defaults for every item),
                            "return_mask"?: bool}
                     or the same request as a binary body, ``Content-Type: application/x-spatialreward-frames``:
                     raw RGB frames in place of base64 images (`frames.py`; no codec, no base64)
                     → {"results": [{"index", "id", "group_id", "ok", "reward", "subscores", "uncertainty",
                                     "presence", "novelty", "boxes", "mask_png"?, "error", "error_kind"}], ...}
    POST /           the SpatialReward reward-server protocol (pickled dicts, restricted unpickler: protocol.py)
    GET  /ping       upstream's health check: {"status": "ok"}
    GET  /health     worker state, queue depth, model; 503 when the worker is down
    GET  /metrics    Prometheus text

A failed edit is an answer the client sees (``ok: false`` + error text; NaN reward in the protocol), never a silent
0 or 0.5. A body that is not a request at all gets a 4xx that names the problem; a full queue gets 503 with
Retry-After; a request past its deadline gets 504 and its edits are dropped before they reach the model; a client
that disconnects has its queued edits dropped too. With a token, every route but /ping and /health needs
``Authorization: Bearer <token>`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import math
import pickle
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from spatialreward.serving.config import ServeConfig
from spatialreward.serving.frames import CONTENT_TYPE as FRAMES_CONTENT_TYPE
from spatialreward.serving.frames import FramesError, decode_frames
from spatialreward.serving.items import (
    BAD_IMAGE,
    MISSING_FIELD,
    Edit,
    ItemError,
    SourceCache,
    check_instruction,
    check_size,
    content_key,
    decode_image,
    decode_source,
)
from spatialreward.serving.metrics import Metrics
from spatialreward.serving.protocol import ProtocolError, build_response, parse_request, restricted_loads
from spatialreward.serving.worker import ItemResult, ModelWorker, QueueFull
from spatialreward.types import SUBSCORE_NAMES

log = logging.getLogger("spatialreward.serving")
DISCONNECT_POLL_S = 0.25


class HTTPProblem(Exception):
    """A request-level failure: status, message, the metrics kind, extra headers."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class RewardService:
    """What the routes share: config, metrics, the worker, the source cache. Also used by the Ray deployment, which
    swaps the worker for its own batching."""

    def __init__(self, config: ServeConfig, model=None, *, worker: ModelWorker | None = None):
        self.config = config
        self.metrics = Metrics()
        if model is None and worker is None:
            from spatialreward.runtime import RewardModel

            model = RewardModel.from_pretrained(config.model, backend=config.backend, device=config.device)
        self.model = model
        self.worker = worker or ModelWorker(model, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                                            max_queue=config.max_queue, metrics=self.metrics)
        self.cache = SourceCache(config.source_cache_size)
        self._token = config.token.encode() if config.token else None

    # -- request plumbing ------------------------------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
            raise HTTPProblem(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                              "unauthorized", {"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise HTTPProblem(413, f"body of {declared} bytes is over the limit of {limit}", "body_too_large")
            except ValueError:
                raise HTTPProblem(400, f"content-length {declared!r} is not a number", "bad_request") from None
        chunks, total = [], 0
        async for chunk in request.stream():  # a chunked body has no declared length: count as it comes
            total += len(chunk)
            if total > limit:
                raise HTTPProblem(413, f"body is over the limit of {limit} bytes", "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def score_edits(self, request: Request, edits: list[Edit], *, want_mask: bool = False) -> list[ItemResult]:
        """Queue the edits and wait for them, the deadline and a disconnect, whichever comes first."""
        timeout = self.config.request_timeout_s
        try:
            future = self.worker.submit(edits, timeout_s=timeout, want_mask=want_mask)
        except QueueFull as exc:
            raise HTTPProblem(503, str(exc), "queue_full", {"Retry-After": str(math.ceil(exc.retry_after_s))}) from exc
        except RuntimeError as exc:
            raise HTTPProblem(503, str(exc), "worker_down", {"Retry-After": "5"}) from exc
        waiter = asyncio.wrap_future(future)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                future.cancel()
                raise HTTPProblem(504, f"no answer within the {timeout:.0f} s deadline; the edits were dropped",
                                  "deadline")
            done, _ = await asyncio.wait({waiter}, timeout=min(DISCONNECT_POLL_S, left))
            if done:
                return waiter.result()
            if await request.is_disconnected():
                future.cancel()  # the worker skips a cancelled request
                raise HTTPProblem(499, "client disconnected", "client_disconnected")

    # -- JSON API --------------------------------------------------------------------------------------------------

    def parse_json(self, body: bytes) -> tuple[list[Edit], list[dict], bool]:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HTTPProblem(400, f"body is not JSON ({exc})", "bad_request") from exc
        return self.parse_payload(payload, self._read_b64)

    def parse_frames(self, body: bytes) -> tuple[list[Edit], list[dict], bool]:
        """The binary body (`frames.py`): the same request with raw RGB frames instead of base64 images."""
        cfg = self.config
        try:
            header, frames = decode_frames(body, max_frames=2 * cfg.max_items + 1, max_pixels=cfg.max_pixels)
        except FramesError as exc:
            raise HTTPProblem(400, str(exc), "bad_request") from exc

        def read(value: Any, name: str, *, source: bool) -> tuple[np.ndarray, str]:
            # the frame itself goes to the model (uint8 [H, W, 3] is an image `RewardModel` takes): at the model's
            # side it is copied straight into the batch, with no PIL round trip
            frame = _frame(value, name, frames)
            check_size(frame.shape[1], frame.shape[0], name, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
            return frame, (content_key(frame.data) if source else "")

        return self.parse_payload(header, read)

    def _read_b64(self, value: Any, name: str, *, source: bool) -> tuple[Image.Image, str]:
        cfg = self.config
        if source:
            return decode_source(_b64(value, name), name, self.cache, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
        return decode_image(_b64(value, name), name, min_side=cfg.min_side, max_pixels=cfg.max_pixels), ""

    def parse_payload(self, payload: Any, read) -> tuple[list[Edit], list[dict], bool]:
        """A decoded request → checked edits, the echoes of their ids, return_mask. ``read(value, name, source=)``
        turns one image field into ``(RGB image, content key)`` or raises `ItemError` for that item alone."""
        if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
            raise HTTPProblem(400, 'body must be a JSON object with an "items" list', "bad_request")
        items = payload["items"]
        cfg = self.config
        if len(items) > cfg.max_items:
            raise HTTPProblem(413, f"{len(items)} items in one request is over the limit of {cfg.max_items}; split "
                                   "the request", "too_many_items")
        shared_source, shared_instruction = payload.get("source"), payload.get("instruction")
        sources = payload.get("sources")
        if sources is not None and not isinstance(sources, list):
            raise HTTPProblem(400, '"sources" must be a list of images', "bad_request")
        edits, echoes = [], []
        read_sources: dict[str, tuple[Image.Image, str] | ItemError] = {}  # sources[k]: decoded and hashed once
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                edits.append(Edit(error=ItemError(MISSING_FIELD, f"items[{i}]: expected an object")))
                echoes.append({})
                continue
            echoes.append({"id": item.get("id"), "group_id": item.get("group_id")})
            try:
                instruction = check_instruction(item.get("instruction", shared_instruction),
                                                f"items[{i}].instruction", max_chars=cfg.max_instruction_chars)
                source_name, source_value = self._item_source(item, i, sources, shared_source)
                if source_name not in read_sources:
                    try:
                        read_sources[source_name] = read(source_value, source_name, source=True)
                    except ItemError as err:
                        read_sources[source_name] = err
                if isinstance(read_sources[source_name], ItemError):
                    raise read_sources[source_name]
                source, key = read_sources[source_name]
                edited, _ = read(item.get("edited"), f"items[{i}].edited", source=False)
                edits.append(Edit(source=source, edited=edited, instruction=instruction, source_key=key))
            except ItemError as err:
                edits.append(Edit(error=err))
        return edits, echoes, bool(payload.get("return_mask", False))

    @staticmethod
    def _item_source(item: dict, i: int, sources: list | None, shared_source: Any) -> tuple[str, Any]:
        """An item's source: its own ``source``, else ``sources[source_index]`` (a group's source sent once per
        request), else the request's ``source``."""
        if "source" in item or "source_index" not in item:
            return f"items[{i}].source", item.get("source", shared_source)
        index = item["source_index"]
        if sources is None or not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(sources):
            size = "no sources list" if sources is None else f"{len(sources)} sources"
            raise ItemError(MISSING_FIELD, f"items[{i}].source_index: {index!r} does not name a source ({size})")
        return f"sources[{index}]", sources[index]

    @staticmethod
    def json_results(results: list[ItemResult], echoes: list[dict], want_mask: bool) -> dict:
        out = []
        for i, (r, echo) in enumerate(zip(results, echoes)):
            row: dict[str, Any] = {"index": i, **echo, "ok": r.ok}
            if r.ok:
                row.update(reward=r.reward, subscores=dict(zip(SUBSCORE_NAMES, r.subscores)),
                           uncertainty=dict(zip(SUBSCORE_NAMES, r.uncertainty)), presence=_nan_to_none(r.presence),
                           novelty=r.novelty, boxes=r.boxes, error=None, error_kind=None)
                if want_mask:
                    png = r.mask_png()
                    row["mask_png"] = base64.b64encode(png).decode() if png is not None else None
            else:
                row.update(reward=None, subscores=None, uncertainty=None, presence=None, novelty=None, boxes=None,
                           error=r.error, error_kind=r.error_kind)
            out.append(row)
        n_ok = sum(r.ok for r in results)
        return {"results": out, "n_ok": n_ok, "n_failed": len(results) - n_ok}


def _b64(value: Any, name: str) -> bytes:
    if value is None:
        raise ItemError(MISSING_FIELD, f"{name}: missing; send the image as base64 PNG / JPEG")
    if not isinstance(value, str):
        raise ItemError(BAD_IMAGE, f"{name}: expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):  # data URLs are common in OpenAI-style clients
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ItemError(BAD_IMAGE, f"{name}: not valid base64 ({exc})") from exc


def _frame(value: Any, name: str, frames: list) -> Any:
    """The frame an image field of a frames body points to (``{"frame": k}``)."""
    if value is None:
        raise ItemError(MISSING_FIELD, f"{name}: missing; send {{\"frame\": k}} pointing into the body's frames")
    k = value.get("frame") if isinstance(value, dict) else None
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(frames):
        raise ItemError(BAD_IMAGE, f"{name}: {value!r} does not name one of the body's {len(frames)} frames")
    return frames[k]


def create_app(config: ServeConfig, model=None, *, service: RewardService | None = None) -> FastAPI:
    """The FastAPI app. ``model`` (a `RewardModel`) is loaded from ``config.model`` when not given."""
    service = service or RewardService(config, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start()
        try:
            yield
        finally:
            service.worker.stop()

    app = FastAPI(title="spatialreward", description="Reward server for image-editing RL", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    metrics = service.metrics

    def problem_response(route: str, exc: HTTPProblem) -> Response:
        metrics.errors.labels(kind=exc.kind).inc()
        metrics.requests.labels(route=route, status=str(exc.status)).inc()
        return JSONResponse({"error": str(exc), "kind": exc.kind}, status_code=exc.status, headers=exc.headers)

    @app.post("/v1/score")
    async def score_json(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            service.check_auth(request)
            body = await service.read_body(request)
            binary = request.headers.get("content-type", "").split(";")[0].strip() == FRAMES_CONTENT_TYPE
            parse = service.parse_frames if binary else service.parse_json
            edits, echoes, want_mask = await run_in_threadpool(parse, body)
            results = await service.score_edits(request, edits, want_mask=want_mask)
            payload = await run_in_threadpool(service.json_results, results, echoes, want_mask)
        except HTTPProblem as exc:
            return problem_response("/v1/score", exc)
        metrics.requests.labels(route="/v1/score", status="200").inc()
        metrics.latency.labels(route="/v1/score").observe(time.perf_counter() - t0)
        return Response(json.dumps(payload, allow_nan=False).encode(), media_type="application/json")

    @app.post("/")
    async def score_protocol(request: Request) -> Response:
        t0 = time.perf_counter()
        cfg = service.config
        try:
            service.check_auth(request)
            body = await service.read_body(request)

            def decode():
                try:
                    obj = restricted_loads(body, max_pixels=cfg.max_pixels)
                    return parse_request(obj, cache=service.cache, max_items=cfg.max_items, min_side=cfg.min_side,
                                         max_pixels=cfg.max_pixels, max_instruction_chars=cfg.max_instruction_chars)
                except ProtocolError as exc:
                    raise HTTPProblem(400, str(exc), "bad_request") from exc

            edits, metas = await run_in_threadpool(decode)
            results = await service.score_edits(request, edits)
            payload = build_response(results, metas)
        except HTTPProblem as exc:
            return problem_response("/", exc)
        metrics.requests.labels(route="/", status="200").inc()
        metrics.latency.labels(route="/").observe(time.perf_counter() - t0)
        return Response(pickle.dumps(payload), media_type="application/octet-stream")

    @app.get("/ping")
    async def ping() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/health")
    async def health() -> Response:
        alive = service.worker.alive
        body = {"status": "ok" if alive else "worker_down", "queue_depth": service.worker.queue_depth,
                "max_batch": service.config.max_batch, "max_wait_ms": service.config.max_wait_ms,
                "input_size": getattr(service.model, "image_size", None),  # what a raw client may resize to
                "model": service.config.model, "backend": service.config.backend, "device": service.config.device}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics_route(request: Request) -> Response:
        try:
            service.check_auth(request)
        except HTTPProblem as exc:
            return problem_response("/metrics", exc)
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
