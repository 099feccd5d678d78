"""What the VLM teacher and its backends share: `TeacherConfig`, `TeacherLoadError`, the request / answer records
and the `Backend` protocol.

`vlm.py` (the teacher), `transformers_backend.py` and `openai_backend.py` all import this module and nothing of
each other's, so a backend can change without touching the teacher and imports run one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from PIL import Image

TRAINING_PIXELS = 512 * 512  # SpatialReward-8B was trained on images near 512×512
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # a 512-token answer is a few KB; anything near this is not an answer


class TeacherLoadError(ValueError):
    """A teacher that cannot be built (missing model, unreachable server); the message says what to do."""


@dataclass
class TeacherConfig:
    """Everything the VLM teacher can be told, with the defaults of the released protocol.

    Prompts:
        prompt_file: JSON file with the wording to use instead of the packaged ``sr-v1`` (see `prompts`).
        name: teacher name in label records and the label folder (default: derived from the model / server).
    Images:
        max_image_pixels: images larger than this are downscaled (aspect kept) before they are sent.
        allow_outside_root: read sample images outside the dataset folder (absolute paths, ``..``). Off by
            default, so a dataset file cannot make the teacher read — and upload — any image on the disk.
    Generation:
        max_new_tokens: answer length cap per call.
        batch_size: requests per ``generate`` call (transformers backend).
    Parse policy:
        parse_retries: how many times an unreadable answer is asked again, with sampling.
        retry_temperature: sampling temperature of those retries.
    Transformers backend:
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``, ...
        dtype: ``auto`` (bfloat16 on GPU, float32 on CPU), ``bfloat16``, ``float16`` or ``float32``.
    HTTP backend:
        concurrency: requests in flight at once.
        timeout_s: per request.
        http_retries: retries of a request after a timeout, a 429/5xx or a malformed body.
        backoff_s: first retry delay; doubles each retry (with jitter).
        api_key_env: environment variable holding the API key (none sent when unset).
        allow_insecure_api_key: send the key over plain http to a host that is not this machine (off: the key
            goes only to https or loopback servers).
        max_response_bytes: a response body longer than this is refused unread.
    """

    # Prompts
    prompt_file: str | None = field(default=None, metadata={"help": "JSON prompts replacing the packaged sr-v1."})
    name: str | None = field(
        default=None, metadata={"help": "Teacher name in label records and of the label folder (default: from the "
                                        "model or server)."}
    )
    # Images
    max_image_pixels: int = field(default=TRAINING_PIXELS, metadata={"help": "Downscale images above this."})
    allow_outside_root: bool = field(
        default=False, metadata={"help": "Read sample images outside the dataset folder (absolute or '..' paths)."}
    )
    # Generation
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length cap per call (VLM teachers)."})
    batch_size: int = field(default=8, metadata={"help": "Requests per generate() call (vlm: teachers)."})
    # Parse policy
    parse_retries: int = field(default=1, metadata={"help": "Re-asks, with sampling, of an unreadable answer."})
    retry_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of those re-asks."})
    # Transformers backend
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N (vlm: teachers)."})
    dtype: str = field(default="auto", metadata={"help": "auto | bfloat16 | float16 | float32 (vlm: teachers)."})
    # HTTP backend
    concurrency: int = field(default=16, metadata={"help": "HTTP requests in flight at once (openai: teachers)."})
    timeout_s: float = field(default=120.0, metadata={"help": "HTTP timeout per request, seconds."})
    http_retries: int = field(default=4, metadata={"help": "HTTP retries after a timeout, 429/5xx or bad body."})
    backoff_s: float = field(default=1.0, metadata={"help": "First HTTP retry delay, doubled each retry."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env variable with the API key."})
    allow_insecure_api_key: bool = field(
        default=False, metadata={"help": "Send the API key over plain http to a non-loopback host."}
    )
    max_response_bytes: int = field(
        default=MAX_RESPONSE_BYTES, metadata={"help": "Refuse HTTP response bodies longer than this."}
    )

    def __post_init__(self) -> None:
        smallest = 56 * 56  # Qwen processors need at least 2×2 merged patches of 14–16 px
        if self.max_image_pixels < smallest:
            raise ValueError(
                f"max_image_pixels={self.max_image_pixels} is below {smallest} (56×56); use >= {smallest}"
            )
        for name in ("max_new_tokens", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("parse_retries", "http_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 disables retries)")
        if self.parse_retries > 0 and not self.retry_temperature > 0:
            raise ValueError(
                f"retry_temperature={self.retry_temperature}: re-asks with greedy decoding repeat the same answer; "
                "use a temperature > 0 (0.7) or parse_retries=0"
            )
        if not (self.timeout_s > 0 and self.backoff_s >= 0):
            raise ValueError(f"timeout_s={self.timeout_s} must be > 0 and backoff_s={self.backoff_s} >= 0")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype={self.dtype!r}: use auto, bfloat16, float16 or float32")
        if self.max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes={self.max_response_bytes} must be >= 1024 (an answer is a few KB)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to rebuild the config in another process (Ray actors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------------------------------------------------------
# What goes to a backend and what comes back
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """One call: images first, then text, as a single user turn. ``seed`` makes sampled re-asks repeatable.

    The edited image is always the last one (SC sends [source, edited], PQ [edited]): the parser reads pixel
    boxes against its size.
    """

    images: list[Image.Image]
    text: str
    system: str | None = None
    seed: int = 0


@dataclass
class Completion:
    """A backend's answer to one request: ``text``, or ``error`` when no answer came."""

    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Backend(Protocol):
    """Runs chat requests. Must return one `Completion` per request, in order, and not raise for one bad one.

    ``name`` is the default teacher name; ``identity`` says exactly what answers (a resolved checkpoint folder or
    hub id, a server URL and model), so two runs that would mix labels from different teachers can be told apart.
    """

    name: str
    identity: str
    preferred_batch_size: int

    def complete(self, requests: Sequence[ChatRequest], *, temperature: float) -> list[Completion]: ...
