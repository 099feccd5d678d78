"""Read a VLM judge's answer: one JSON object, found and repaired where real model output bends the rules.

SpatialReward-8B answers the SC call (source + edited image) with::

    {"edit_region": [{"id": 0, "label": "cat", "bbox_2d": [x1, y1, x2, y2]}, ...],
     "reasoning": "... <|bbox_0|> ... <|global|> ...",
     "score": [instruction_following, consistency]}

and the PQ call (edited image only) with ``{"reasoning": ..., "score": [naturalness, artifacts]}``. Boxes are in
0–1000 on the edited image; scores are 0–25.

What real output does to that, and what we do about it, in order:

1. ``<think>…</think>`` blocks (Qwen3 reasoning) are removed; an unclosed ``<think>`` means the answer never came.
2. Markdown code fences: the first fence holding a ``{`` is read, else the whole text.
3. Prose around the JSON: the first *balanced* ``{…}`` that decodes to an object with a ``score`` key is taken
   (braces inside strings are skipped). No balanced object → ``parse_error`` ("truncated?").
4. Near-JSON is repaired, string-aware: single-quoted strings, trailing commas, Python ``True/False/None``, bare
   keys. Scores may be numeric strings (``"20"``, ``"20/25"``); boxes may be strings (``"[1, 2, 3, 4]"``).
5. Boxes are clamped to 0–1000 and their corners ordered; boxes thinner than `MIN_BOX_SIDE` are dropped with a
   warning. A region whose box cannot be read at all is a ``parse_error`` (we will not guess where it was).
6. Scores must be exactly two finite numbers in 0–25; anything else is a ``parse_error``. There is no default:
   the upstream scorer fills 12.5 for an unreadable score, we never do.

Every outcome is a `ParsedAnswer` with ``status`` ``ok`` or ``parse_error``, the reason in ``error`` and small
repairs listed in ``warnings``. The raw text is kept by the caller.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

CallType = Literal["sc", "pq"]
SCORE_MAX = 25.0
BOX_SCALE = 1000.0
MIN_BOX_SIDE = 1.0  # in 0–1000 units (0.1% of the image side): thinner boxes carry no area and are dropped
MAX_ANSWER_CHARS = 200_000  # longer answers are not model output we can trust; refuse rather than scan forever
MAX_CANDIDATES = 256  # balanced {…} spans tried per answer; bounds the scan on brace-heavy garbage

_SCORE_KEYS = ("score", "scores")
_REGION_KEYS = ("edit_region", "edit_regions", "regions")
_REASONING_KEYS = ("reasoning", "reason", "rationale")
_BOX_KEYS = ("bbox_2d", "bbox", "box")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:/\s*25(?:\.0*)?)?\s*$")
_BBOX_REF = re.compile(r"<\|bbox_(\d+)\|>")


@dataclass
class ParsedAnswer:
    """One call's answer, read. ``scores`` is the pair the call asks for; ``boxes`` only for SC."""

    call: CallType
    status: Literal["ok", "parse_error"]
    scores: tuple[float, float] | None = None
    boxes: list[list[float]] = field(default_factory=list)
    region_labels: list[str] = field(default_factory=list)
    region_ids: list[str] = field(default_factory=list)  # the model's id of each kept box (reasoning cites it)
    reasoning: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class AnswerError(ValueError):
    """Why an answer could not be read; becomes ``ParsedAnswer.error``."""


# ---------------------------------------------------------------------------------------------------------------
# Front doors
# ---------------------------------------------------------------------------------------------------------------


def parse_sc(text: str) -> ParsedAnswer:
    """Read an SC answer: edit regions, reasoning, [instruction_following, consistency]."""
    return parse_answer(text, "sc")


def parse_pq(text: str) -> ParsedAnswer:
    """Read a PQ answer: reasoning, [naturalness, artifacts]. Regions, if the model adds any, are ignored."""
    return parse_answer(text, "pq")


def parse_answer(text: str, call: CallType) -> ParsedAnswer:
    """Read one answer of either call; never raises for bad model output."""
    warnings: list[str] = []
    try:
        obj = extract_json_object(text, warnings)
        scores = _read_scores(obj)
        reasoning = _read_reasoning(obj)
        boxes: list[list[float]] = []
        labels: list[str] = []
        ids: list[str] = []
        if call == "sc":
            boxes, labels, ids = _read_regions(obj, warnings)
            uncited = sorted({m for m in _BBOX_REF.findall(reasoning) if m not in ids}, key=int)
            if uncited:
                warnings.append(f"reasoning cites <|bbox_{uncited[0]}|>, which is not among the kept regions {ids}")
    except AnswerError as exc:
        return ParsedAnswer(call=call, status="parse_error", error=str(exc), warnings=warnings)
    return ParsedAnswer(
        call=call, status="ok", scores=scores, boxes=boxes, region_labels=labels, region_ids=ids,
        reasoning=reasoning, warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------------------------
# Finding the object
# ---------------------------------------------------------------------------------------------------------------


def strip_think(text: str) -> str:
    """Remove ``<think>…</think>``; text after a lone ``</think>`` (template opened it) is the answer."""
    text = _THINK_BLOCK.sub("", text)
    lower = text.lower()
    if "</think>" in lower:
        text = text[lower.rindex("</think>") + len("</think>") :]
    elif "<think>" in lower:
        raise AnswerError("unclosed <think> block: the answer ended while still reasoning (raise max_new_tokens?)")
    return text


def extract_json_object(text: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """The answer's JSON object: think blocks and fences removed, first balanced object with a ``score`` key."""
    warnings = warnings if warnings is not None else []
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("empty answer")
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerError(f"answer is {len(text):,} characters, more than the {MAX_ANSWER_CHARS:,} we read")
    body = strip_think(text)
    fenced = [m.group(1) for m in _FENCE.finditer(body) if "{" in m.group(1)]
    if fenced:
        body = fenced[0]
    first_object: dict[str, Any] | None = None
    saw_open = False
    for start, end in _balanced_spans(body):
        saw_open = True
        if end is None:
            break
        obj = _loads_lenient(body[start:end], warnings)
        if not isinstance(obj, dict):
            continue
        if any(k in _lower_keys(obj) for k in _SCORE_KEYS):
            return _lower_keys(obj)
        first_object = first_object or _lower_keys(obj)
    if first_object is not None:
        return first_object  # no object has a score: the score reader names what is missing
    if saw_open:
        raise AnswerError("no complete JSON object: the answer was truncated mid-object (raise max_new_tokens?)")
    raise AnswerError("no JSON object in the answer")


def _lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _balanced_spans(text: str):
    """Yield ``(start, end)`` of each balanced ``{…}`` in order (``end=None`` once one never closes).

    Strings in either quote style are skipped, so braces inside reasoning text do not count. After a balanced
    span the scan resumes *inside* it too: a broken outer object may hold a readable inner one.
    """
    start, tried = text.find("{"), 0
    while start != -1 and tried < MAX_CANDIDATES:
        tried += 1
        depth, quote, escaped, end = 0, None, False, None
        for i in range(start, len(text)):
            ch = text[i]
            if quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                # An apostrophe inside a bare word (it's) is not a quote; JSON strings never start mid-word.
                if ch == "'" and i > 0 and text[i - 1].isalnum():
                    continue
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        yield start, end
        if end is None:
            return
        start = text.find("{", start + 1)


# ---------------------------------------------------------------------------------------------------------------
# Repairing near-JSON
# ---------------------------------------------------------------------------------------------------------------


def _loads_lenient(candidate: str, warnings: list[str]) -> Any:
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    repaired = _repair_json(candidate)
    try:
        obj = json.loads(repaired)
    except json.JSONDecodeError:
        return None
    warnings.append("repaired near-JSON (quotes, trailing commas, literals or bare keys)")
    return obj


_LITERALS = {"True": "true", "False": "false", "None": "null", "true": "true", "false": "false", "null": "null"}


def _repair_json(s: str) -> str:
    """Rewrite near-JSON as JSON, one character at a time so string contents are never touched."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch in "\"'":
            j, buf = i + 1, []
            while j < n and s[j] != ch:
                if s[j] == "\\" and j + 1 < n:
                    buf.append(s[j : j + 2])
                    j += 2
                    continue
                buf.append(s[j])
                j += 1
            content = "".join(buf)
            if ch == "'":  # single-quoted: unescape \' and escape bare double quotes
                content = content.replace("\\'", "'").replace('"', '\\"')
            out.append('"' + content.replace("\n", "\\n") + '"')
            i = j + 1
        elif ch == ",":
            j = i + 1
            while j < n and s[j].isspace():
                j += 1
            if j < n and s[j] in "}]":  # trailing comma
                i += 1
                continue
            out.append(ch)
            i += 1
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (s[j].isalnum() or s[j] == "_"):
                j += 1
            word = s[i:j]
            k = j
            while k < n and s[k].isspace():
                k += 1
            if k < n and s[k] == ":":
                out.append(json.dumps(word))  # bare key
            else:
                out.append(_LITERALS.get(word, word))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Reading fields
# ---------------------------------------------------------------------------------------------------------------


def _first_key(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    for k in keys:
        if k in obj:
            return True, obj[k]
    return False, None


def _as_number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise AnswerError(f"{what} is a boolean ({value}), expected a number")
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str) and (m := _NUMBER.match(value)):
        v = float(m.group(1))
    else:
        raise AnswerError(f"{what} = {value!r} is not a number")
    if not math.isfinite(v):
        raise AnswerError(f"{what} = {v} is not finite")
    return v


def _as_list(value: Any, what: str) -> list[Any]:
    """A list, or a string holding one (``"[1, 2]"`` or ``"1, 2"``)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        inner = value.strip()
        if inner.startswith("[") and inner.endswith("]"):
            inner = inner[1:-1]
        parts = [p for p in re.split(r"[,\s]+", inner.strip()) if p]
        if parts:
            return parts
    raise AnswerError(f"{what} = {value!r} is not a list")


def _read_scores(obj: dict[str, Any]) -> tuple[float, float]:
    found, raw = _first_key(obj, _SCORE_KEYS)
    if not found:
        raise AnswerError(f"no 'score' in the answer (keys: {sorted(obj)})")
    values = _as_list(raw, "score")
    if len(values) != 2:
        raise AnswerError(f"score has {len(values)} values {values!r}, expected 2")
    scores = tuple(_as_number(v, f"score[{i}]") for i, v in enumerate(values))
    for i, v in enumerate(scores):
        if not 0.0 <= v <= SCORE_MAX:
            raise AnswerError(f"score[{i}] = {v:g} is outside 0–25")
    return scores  # type: ignore[return-value]


def _read_reasoning(obj: dict[str, Any]) -> str:
    _, raw = _first_key(obj, _REASONING_KEYS)
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)


def _read_regions(obj: dict[str, Any], warnings: list[str]) -> tuple[list[list[float]], list[str], list[str]]:
    found, raw = _first_key(obj, _REGION_KEYS)
    if not found:
        raise AnswerError(f"no 'edit_region' in the SC answer (keys: {sorted(obj)})")
    if raw is None:
        warnings.append("edit_region is null; read as no regions")
        return [], [], []
    if isinstance(raw, dict):  # a single region not wrapped in a list
        raw = [raw]
        warnings.append("edit_region is one object, not a list")
    if isinstance(raw, str):
        raise AnswerError(f"edit_region is a string ({raw[:60]!r}), expected a list of regions")
    if not isinstance(raw, list):
        raise AnswerError(f"edit_region is {type(raw).__name__}, expected a list of regions")
    boxes, labels, ids = [], [], []
    for index, region in enumerate(raw):
        if isinstance(region, dict):
            region = _lower_keys(region)
            has_box, box_raw = _first_key(region, _BOX_KEYS)
            if not has_box:
                raise AnswerError(f"edit_region[{index}] has no bbox_2d (keys: {sorted(region)})")
            label = str(region.get("label", "") or "")
            region_id = str(region.get("id", index))
        else:  # a bare [x1, y1, x2, y2]
            box_raw, label, region_id = region, "", str(index)
        values = _as_list(box_raw, f"edit_region[{index}].bbox_2d")
        if len(values) != 4:
            raise AnswerError(f"edit_region[{index}].bbox_2d has {len(values)} numbers, expected 4")
        x1, y1, x2, y2 = (_as_number(v, f"edit_region[{index}].bbox_2d") for v in values)
        box = _clean_box(x1, y1, x2, y2, index, warnings)
        if box is None:
            continue
        boxes.append(box)
        labels.append(label)
        ids.append(region_id)
    return boxes, labels, ids


def _clean_box(x1: float, y1: float, x2: float, y2: float, index: int, warnings: list[str]) -> list[float] | None:
    """Order corners, clamp to 0–1000, drop boxes thinner than `MIN_BOX_SIDE` (with a warning each)."""
    original = [x1, y1, x2, y2]
    if x2 < x1 or y2 < y1:
        warnings.append(f"edit_region[{index}] corners out of order; reordered")
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    box = [min(max(v, 0.0), BOX_SCALE) for v in (x1, y1, x2, y2)]
    if box != [x1, y1, x2, y2]:
        warnings.append(f"edit_region[{index}] = {original} clamped to 0–1000")
    if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
        warnings.append(f"edit_region[{index}] = {original} is degenerate after clamping; dropped")
        return None
    return box

