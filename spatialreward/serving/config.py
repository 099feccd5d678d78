"""`ServeConfig`: every knob of the reward server in one dataclass (the CLI's options mirror its fields)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: treat as reachable from outside
        return False


@dataclass
class ServeConfig:
    """Settings of `spatialreward serve`.

    Batching:
        max_batch: edits scored in one model call; a batch closes when it holds this many edits ...
        max_wait_ms: ... or this long after its first request arrived, whichever comes first.
        max_queue: edits waiting for the model; a request that would exceed it gets 503 + Retry-After.
    Limits (a request over them gets 413 / 400; an item over them gets its own error):
        max_body_bytes, max_items (edits per request), max_pixels (per image), max_instruction_chars,
        min_side (pixels; smaller images cannot be judged).
        request_timeout_s: per-request deadline; an unanswered request gets 504 and its edits are dropped.
    Binding:
        host / port; a non-loopback host needs ``token`` (bearer, compared in constant time) or ``insecure``.
    """

    # -- model ------------------------------------------------------------------
    model: str = ""
    backend: str = "torch"
    device: str = "cpu"
    # -- batching ---------------------------------------------------------------
    max_batch: int = 256
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    # -- limits -----------------------------------------------------------------
    max_body_bytes: int = 256 * 1024 * 1024
    max_items: int = 1024
    max_pixels: int = 16_000_000
    min_side: int = 16
    max_instruction_chars: int = 2000
    request_timeout_s: float = 120.0
    source_cache_size: int = 256  # decoded sources kept by content hash: a GRPO group's repeated source decodes once
    # -- binding ----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 23456
    token: str | None = field(default=None, repr=False)
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch}; it must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms}; it must be >= 0")
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue={self.max_queue} < max_batch={self.max_batch}; the queue must hold a batch")
        if self.max_items > self.max_queue:
            raise ValueError(f"max_items={self.max_items} > max_queue={self.max_queue}; no request that size could fit")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the token is shorter than 16 characters; use e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'`")
        if not is_loopback(self.host) and not self.token and not self.insecure:
            raise ValueError(
                f"--host {self.host} exposes the server beyond this machine without authentication; pass "
                "--token-file FILE (clients send 'Authorization: Bearer <token>') or --insecure if the network is "
                "trusted"
            )
