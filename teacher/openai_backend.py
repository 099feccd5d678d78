"""OpenAI-compatible chat-completions backend: `vllm serve`, SGLang, or a hosted judge such as GPT-4.1.

Each request is one user turn with the images as base64 PNG data URLs (PNG, not JPEG: the PQ call judges
artifacts, and JPEG would add its own) followed by the prompt text. Requests run on an ``httpx.AsyncClient``
under a semaphore of ``concurrency``; results come back in request order whatever order the server answers in.

Per request: a timeout; retries with exponential backoff (+ jitter) after a timeout, a connection error, HTTP
408/409/429/5xx, or a body that is not a chat completion (``usage`` included); no retry after other 4xx (the
request itself is wrong, and the error says so) or after a body longer than ``max_response_bytes`` (read no
further: an answer is a few KB). A request that exhausts its retries comes back as a `Completion` with ``error``
set — one bad request never fails the batch.

The API key (``$OPENAI_API_KEY`` by default) is sent only to https URLs and to loopback hosts; to a plain-http
server elsewhere it is left out (with a warning, and 401/403 answers say why) unless ``allow_insecure_api_key``.

The teacher's name is ``openai:<base URL>#<model>``: the same model behind another server is another teacher,
so its labels go to another folder and never mix on resume.

Serving SpatialReward-8B with vLLM (the prefix cache pays off when a GRPO group's edits arrive together, which
the labeler arranges)::

    vllm serve SpatialReward/SpatialReward-8B --max-model-len 8192 --limit-mm-per-prompt '{"image": 2}'
    spatialreward label --data DIR --teacher openai:http://localhost:8000/v1#SpatialReward/SpatialReward-8B
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from spatialreward.teacher.config import (
    MAX_RESPONSE_BYTES,
    ChatRequest,
    Completion,
    TeacherConfig,
    TeacherLoadError,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path is kept as given (minus a trailing /)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TeacherLoadError(f"{url!r} is not an http(s) URL; expected e.g. http://localhost:8000/v1")
    url = url.rstrip("/")
    return url + "/v1" if parts.path in ("", "/") else url


def openai_name(base_url: str, model: str) -> str:
    """Teacher name (and identity) of a model behind a server: ``openai:<normalized base URL>#<model>``."""
    return f"openai:{normalize_base_url(base_url)}#{model}"


def is_private_transport(url: str) -> bool:
    """True when a secret sent to ``url`` cannot be read on the wire: https, or a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BodyTooLarge(Exception):
    """A response body over the cap; it was not read to the end."""


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend:
    """Chat completions against ``base_url`` for ``model``.

    Arguments:
        base_url: server root with the API prefix, e.g. ``http://localhost:8000/v1`` (``/v1`` added when bare).
        model: model name the server knows; ``None`` asks ``GET /models`` and takes the only (first) one.
        api_key: sent as a Bearer token when given, to https or loopback servers only (module docstring).
        allow_insecure_api_key: also send it over plain http to another host.
        concurrency / timeout_s / retries / backoff_s / max_new_tokens / max_response_bytes: see `TeacherConfig`.
    """

    def __init__(
        self, base_url: str, model: str | None = None, *, api_key: str | None = None,
        allow_insecure_api_key: bool = False, concurrency: int = 16, timeout_s: float = 120.0, retries: int = 4,
        backoff_s: float = 1.0, max_new_tokens: int = 512, max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.base_url = normalize_base_url(base_url)
        self.key_withheld = bool(api_key) and not allow_insecure_api_key and not is_private_transport(self.base_url)
        if self.key_withheld:
            log.warning(
                "not sending the API key to %s: plain http to another machine would expose it (use https, or "
                "--allow-insecure-api-key if this network is trusted)", self.base_url,
            )
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key and not self.key_withheld else {}
        self.max_response_bytes = max_response_bytes
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_new_tokens = max_new_tokens
        self.model = model or self._discover_model()
        self.name = self.identity = openai_name(self.base_url, self.model)
        # Both calls of a sample go out together, so this many samples keep `concurrency` requests busy.
        self.preferred_batch_size = max(1, concurrency)

    @classmethod
    def from_config(cls, base_url: str, model: str | None, config: TeacherConfig) -> OpenAIBackend:
        return cls(
            base_url, model, api_key=os.environ.get(config.api_key_env) or None,
            allow_insecure_api_key=config.allow_insecure_api_key, concurrency=config.concurrency,
            timeout_s=config.timeout_s, retries=config.http_retries, backoff_s=config.backoff_s,
            max_new_tokens=config.max_new_tokens, max_response_bytes=config.max_response_bytes,
        )

    def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            with httpx.stream("GET", url, headers=self.headers, timeout=self.timeout_s) as response:
                body = _read_capped_sync(response, self.max_response_bytes)
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}{self._auth_hint(response.status_code)}: "
                                     f"{body[:200]!r}")
            models = [str(m["id"]) for m in json.loads(body)["data"]]
        except (httpx.HTTPError, BodyTooLarge, ValueError, KeyError, TypeError) as exc:
            raise TeacherLoadError(
                f"cannot list models at {url} ({type(exc).__name__}: {exc}); is the server up? "
                "Or name the model: openai:URL#MODEL"
            ) from exc
        if not models:
            raise TeacherLoadError(f"{url} lists no models; name one: openai:URL#MODEL")
        return models[0]

    # -----------------------------------------------------------------------------------------------------------

    def payload(self, request: ChatRequest, temperature: float) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in request.images
        ]
        content.append({"type": "text", "text": request.text})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_tokens": self.max_new_tokens, "temperature": temperature,
        }
        if temperature > 0:
            body["seed"] = request.seed
        return body

    def complete(self, requests: Sequence[ChatRequest], *, temperature: float) -> list[Completion]:
        """Answers in request order. Runs its own event loop (in a thread when one is already running)."""
        def run() -> list[Completion]:
            return asyncio.run(self.complete_async(requests, temperature=temperature))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run()
        with ThreadPoolExecutor(max_workers=1) as pool:  # called from async code (a notebook, an async actor)
            return pool.submit(run).result()

    async def complete_async(self, requests: Sequence[ChatRequest], *, temperature: float) -> list[Completion]:
        payloads = [self.payload(r, temperature) for r in requests]  # encode images once, outside the retries
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        semaphore = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout_s, limits=limits
        ) as client:
            return list(await asyncio.gather(*(self._one(client, semaphore, p) for p in payloads)))

    def _auth_hint(self, status: int) -> str:
        if status in (401, 403) and self.key_withheld:
            return " (the API key was not sent: plain http to another machine; use https or --allow-insecure-api-key)"
        return ""

    async def _one(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, body: dict) -> Completion:
        error = "not sent"
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: retries do not arrive in waves
            async with semaphore:
                try:
                    async with client.stream("POST", "/chat/completions", json=body) as response:
                        status = response.status_code
                        raw = await _read_capped(response, self.max_response_bytes)
                except httpx.TimeoutException:
                    error = f"timed out after {self.timeout_s:g} s"
                    continue
                except httpx.TransportError as exc:
                    error = f"connection error: {type(exc).__name__}: {exc}"
                    continue
                except BodyTooLarge as exc:
                    return Completion(text=None, error=f"{exc} (not retried; raise max_response_bytes if it is real)")
            text_body = raw.decode("utf-8", errors="replace")
            if status != 200:
                error = f"HTTP {status}{self._auth_hint(status)}: {text_body[:300]}"
                if status in RETRYABLE_STATUS:
                    continue
                return Completion(text=None, error=f"{error} (not retried: the request itself was refused)")
            try:  # everything read from the body, usage included, is checked here: one odd body is one error
                data = json.loads(raw)
                text = data["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError(f"content is {type(text).__name__}")
                prompt_tokens, completion_tokens = _usage(data.get("usage"))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                error = f"malformed response body ({type(exc).__name__}: {exc}): {text_body[:200]!r}"
                continue
            return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        attempts = self.retries + 1
        return Completion(text=None, error=f"{error} (after {attempts} attempt{'s' if attempts != 1 else ''})")


def _usage(usage: Any) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a body's ``usage``; absent counts are 0, malformed ones raise."""
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise TypeError(f"usage is {type(usage).__name__}, expected an object")
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if value is None:
            counts.append(0)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"usage.{key} = {value!r} is not a token count")
        else:
            counts.append(value)
    return counts[0], counts[1]


class _CappedBody:
    """A response body collected chunk by chunk, refused past ``limit`` bytes (a stated Content-Length over it is
    refused unread). One class so the async and sync readers below share the rule."""

    def __init__(self, response: httpx.Response, limit: int):
        _check_length_header(response, limit)
        self.limit, self.size, self.chunks = limit, 0, []

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise BodyTooLarge(f"response body over {self.limit:,} bytes")
        self.chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self.chunks)


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    body = _CappedBody(response, limit)
    async for chunk in response.aiter_bytes():
        body.add(chunk)
    return body.value()


def _read_capped_sync(response: httpx.Response, limit: int) -> bytes:
    body = _CappedBody(response, limit)
    for chunk in response.iter_bytes():
        body.add(chunk)
    return body.value()


def _check_length_header(response: httpx.Response, limit: int) -> None:
    stated = response.headers.get("content-length")
    if stated and stated.isdigit() and int(stated) > limit:
        raise BodyTooLarge(f"response body of {int(stated):,} bytes is over the {limit:,}-byte cap")
