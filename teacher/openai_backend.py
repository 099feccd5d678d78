"""OpenAI-compatible chat-completions backend: `vllm serve`, SGLang, or a hosted judge such as GPT-4.1.

Each request is one user turn with the images as base64 PNG data URLs (PNG, not JPEG: the PQ call judges
artifacts, and JPEG would add its own) followed by the prompt text. Requests run on an ``httpx.AsyncClient``
under a semaphore of ``concurrency``; results come back in request order whatever order the server answers in.

Per request: a timeout; retries with exponential backoff (+ jitter) after a timeout, a connection error, HTTP
408/409/429/5xx, or a body that is not a chat completion; no retry after other 4xx (the request itself is wrong,
and the error says so). A request that exhausts its retries comes back as a `Completion` with ``error`` set —
one bad request never fails the batch.

Serving SpatialReward-8B with vLLM (the prefix cache pays off when a GRPO group's edits arrive together, which
the labeler arranges)::

    vllm serve SpatialReward/SpatialReward-8B --max-model-len 8192 --limit-mm-per-prompt '{"image": 2}'
    spatialreward label --data DIR --teacher openai:http://localhost:8000/v1#SpatialReward/SpatialReward-8B
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from spatialreward.teacher.vlm import ChatRequest, Completion, TeacherConfig, TeacherLoadError

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path is kept as given (minus a trailing /)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TeacherLoadError(f"{url!r} is not an http(s) URL; expected e.g. http://localhost:8000/v1")
    url = url.rstrip("/")
    return url + "/v1" if parts.path in ("", "/") else url


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIBackend:
    """Chat completions against ``base_url`` for ``model``.

    Arguments:
        base_url: server root with the API prefix, e.g. ``http://localhost:8000/v1`` (``/v1`` added when bare).
        model: model name the server knows; ``None`` asks ``GET /models`` and takes the only (first) one.
        api_key: sent as a Bearer token when given.
        concurrency / timeout_s / retries / backoff_s / max_new_tokens: see `TeacherConfig`.
    """

    def __init__(
        self, base_url: str, model: str | None = None, *, api_key: str | None = None, concurrency: int = 16,
        timeout_s: float = 120.0, retries: int = 4, backoff_s: float = 1.0, max_new_tokens: int = 512,
    ):
        self.base_url = normalize_base_url(base_url)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_new_tokens = max_new_tokens
        self.model = model or self._discover_model()
        self.name = f"openai:{self.model}"
        # Both calls of a sample go out together, so this many samples keep `concurrency` requests busy.
        self.preferred_batch_size = max(1, concurrency)

    @classmethod
    def from_config(cls, base_url: str, model: str | None, config: TeacherConfig) -> OpenAIBackend:
        return cls(
            base_url, model, api_key=os.environ.get(config.api_key_env) or None, concurrency=config.concurrency,
            timeout_s=config.timeout_s, retries=config.http_retries, backoff_s=config.backoff_s,
            max_new_tokens=config.max_new_tokens,
        )

    def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            response = httpx.get(url, headers=self.headers, timeout=self.timeout_s)
            response.raise_for_status()
            models = [m["id"] for m in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
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

    async def _one(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, body: dict) -> Completion:
        error = "not sent"
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: retries do not arrive in waves
            async with semaphore:
                try:
                    response = await client.post("/chat/completions", json=body)
                except httpx.TimeoutException:
                    error = f"timed out after {self.timeout_s:g} s"
                    continue
                except httpx.TransportError as exc:
                    error = f"connection error: {type(exc).__name__}: {exc}"
                    continue
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code in RETRYABLE_STATUS:
                    continue
                return Completion(text=None, error=f"{error} (not retried: the request itself was refused)")
            try:
                data = response.json()
                text = data["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError(f"content is {type(text).__name__}")
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                error = f"malformed response body ({type(exc).__name__}: {exc}): {response.text[:200]!r}"
                continue
            usage = data.get("usage") or {}
            return Completion(
                text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        attempts = self.retries + 1
        return Completion(text=None, error=f"{error} (after {attempts} attempt{'s' if attempts != 1 else ''})")
