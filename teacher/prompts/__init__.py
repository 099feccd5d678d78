"""Prompt templates of the VLM teacher, versioned; the version goes into every label record.

The packaged set ``sr-v1`` (``sc_v1.txt``, ``pq_v1.txt``) is our own wording of the SpatialReward protocol: it
asks for exactly the JSON schema and score scales the parser reads. The released SpatialReward-8B checkpoint was
trained with the authors' wording; a user who wants it passes ``--prompt-file`` (a JSON file)::

    {"version": "authors",        # optional; recorded as "<version>@<sha256 of the file, 12 hex>"
     "style": "python",           # optional: "literal" (default) or "python" (see below)
     "score_range": 25,           # optional: the score scale the prompt asks for, and {score_range} in python
                                  # style; answers on another scale are converted to 0–25 and flagged
     "system": "...",             # optional system message
     "sc": "... {instruction} ...",
     "pq": "..."}

``literal`` style substitutes only the exact token ``{instruction}``, so templates may contain JSON braces freely.
``python`` style renders templates with ``str.format(instruction=..., score_range=...)`` — braces doubled as in
Python source — which is how the authors' scorer renders its own. Their wording is ``SC_PROMPT_TEMPLATE`` and
``PQ_PROMPT_TEMPLATE`` in ``example/reward/server/spatial_reward_scorer.py`` of
https://github.com/lorangan-ddup/SpatialReward (linked from the model card of SpatialReward/SpatialReward-8B).
With that file importable, this writes a prompt file whose rendered prompts are the authors', character for
character::

    json.dump({"version": "authors", "style": "python", "sc": SC_PROMPT_TEMPLATE, "pq": PQ_PROMPT_TEMPLATE},
              open("authors_prompts.json", "w"))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from spatialreward.types import SCORE_MAX

DEFAULT_VERSION = "sr-v1"
INSTRUCTION_SLOT = "{instruction}"
_SENTINEL = "\x00instruction\x00"  # stands in for an instruction when a template is checked
_PACKAGED = {"sr-v1": ("sc_v1.txt", "pq_v1.txt")}


@dataclass(frozen=True)
class PromptSet:
    """The texts of the two calls. ``version`` names them in label records; ``style`` says how they render."""

    version: str
    sc: str
    pq: str
    system: str | None = None
    style: Literal["literal", "python"] = "literal"
    score_range: int = int(SCORE_MAX)  # the labels' own scale: answers need no rescaling

    def __post_init__(self) -> None:
        if self.style not in ("literal", "python"):
            raise ValueError(f"prompt set {self.version!r}: style {self.style!r} is not 'literal' or 'python'")
        try:
            rendered = self.sc_text(_SENTINEL)
            self.pq_text()
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"prompt set {self.version!r}: a python-style template does not render ({type(exc).__name__}: "
                f"{exc}); only {{instruction}} and {{score_range}} are filled, other braces must be doubled"
            ) from exc
        if _SENTINEL not in rendered:
            raise ValueError(f"prompt set {self.version!r}: the SC template has no {INSTRUCTION_SLOT} slot")

    def sc_text(self, instruction: str) -> str:
        if self.style == "python":
            return self.sc.format(instruction=instruction, score_range=self.score_range)
        return self.sc.replace(INSTRUCTION_SLOT, instruction)

    def pq_text(self) -> str:
        if self.style == "python":
            return self.pq.format(score_range=self.score_range)
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
    allowed = {"version", "style", "score_range", "system", "sc", "pq"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"prompt file {path}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    digest = hashlib.sha256(raw).hexdigest()[:12]
    name = str(spec.get("version") or f"file:{path.name}")
    try:
        return PromptSet(
            version=f"{name}@{digest}", sc=spec["sc"], pq=spec["pq"], system=spec.get("system"),
            style=spec.get("style", "literal"), score_range=int(spec.get("score_range", SCORE_MAX)),
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"prompt file {path}: {exc}") from exc
