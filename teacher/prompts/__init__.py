"""Prompt templates of the VLM teacher, versioned; the version goes into every label record.

The packaged set ``sr-v1`` (``sc_v1.txt``, ``pq_v1.txt``) is our own wording of the SpatialReward protocol: it
asks for exactly the JSON schema and score scales the parser reads. The released SpatialReward-8B checkpoint was
trained with the authors' wording; a user who has it substitutes it with ``--prompt-file`` (a JSON file)::

    {"version": "authors-2602.07458",          # optional; recorded as "<version>@<sha256[:12]>"
     "system": "...",                          # optional system message
     "sc": "... {instruction} ...",            # SC text (after the two images); must contain {instruction}
     "pq": "..."}                              # PQ text (after the edited image)

Only the exact token ``{instruction}`` is substituted, so templates may contain JSON braces freely.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_VERSION = "sr-v1"
INSTRUCTION_SLOT = "{instruction}"
_PACKAGED = {"sr-v1": ("sc_v1.txt", "pq_v1.txt")}


@dataclass(frozen=True)
class PromptSet:
    """The texts of the two calls. ``version`` names them in label records."""

    version: str
    sc: str
    pq: str
    system: str | None = None

    def __post_init__(self) -> None:
        if INSTRUCTION_SLOT not in self.sc:
            raise ValueError(f"prompt set {self.version!r}: the SC template has no {INSTRUCTION_SLOT} slot")

    def sc_text(self, instruction: str) -> str:
        return self.sc.replace(INSTRUCTION_SLOT, instruction)

    def pq_text(self) -> str:
        return self.pq


def packaged_versions() -> list[str]:
    return sorted(_PACKAGED)


def load_prompts(prompt_file: str | Path | None = None, version: str = DEFAULT_VERSION) -> PromptSet:
    """A packaged prompt set by ``version``, or the user's JSON ``prompt_file`` (see the module docstring)."""
    if prompt_file is None:
        if version not in _PACKAGED:
            raise ValueError(f"unknown prompt version {version!r}; packaged: {packaged_versions()}")
        sc_name, pq_name = _PACKAGED[version]
        folder = resources.files(__name__)
        return PromptSet(
            version=version,
            sc=folder.joinpath(sc_name).read_text(encoding="utf-8").strip(),
            pq=folder.joinpath(pq_name).read_text(encoding="utf-8").strip(),
        )
    path = Path(prompt_file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"prompt file {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompt file {path}: not JSON ({exc}); expected {{\"sc\": ..., \"pq\": ...}}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"prompt file {path}: expected a JSON object with 'sc' and 'pq'")
    missing = [k for k in ("sc", "pq") if not isinstance(spec.get(k), str) or not spec[k].strip()]
    if missing:
        raise ValueError(f"prompt file {path}: missing or empty {missing} (each a template string)")
    unknown = sorted(set(spec) - {"version", "system", "sc", "pq"})
    if unknown:
        raise ValueError(f"prompt file {path}: unknown keys {unknown} (allowed: version, system, sc, pq)")
    digest = hashlib.sha256(raw).hexdigest()[:12]
    name = str(spec.get("version") or f"file:{path.name}")
    try:
        return PromptSet(version=f"{name}@{digest}", sc=spec["sc"], pq=spec["pq"], system=spec.get("system"))
    except ValueError as exc:
        raise ValueError(f"prompt file {path}: {exc}") from exc
