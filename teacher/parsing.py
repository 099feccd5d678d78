"""Read a VLM judge's answer: one JSON object, found and repaired where real model output bends the rules.

SpatialReward-8B answers the SC call (source + edited image) with::

    {"edit_region": [{"id": 0, "label": "cat", "bbox_2d": [x1, y1, x2, y2]}, ...],
     "reasoning": "... <|bbox_0|> ... <|global|> ...",
     "score": [instruction_following, consistency]}

and the PQ call (edited image only) with ``{"reasoning": ..., "score": [naturalness, artifacts]}``. Boxes are in
0–1000 on the edited image; scores are 0–25.

What real output does to that, and what we do about it, in order:

1. ``<think>…</think>`` blocks (Qwen3 reasoning) are removed; an unclosed ``<think>`` means the answer never came.
2. Prose, code fences and echoed examples around the JSON: every complete top-level ``{…}`` that decodes to an
   object with a ``score`` key is a candidate (braces inside strings are skipped; a broken outer object is searched
   inside). **The final answer wins**: the last candidate that reads cleanly (``Example: {"score": [25, 25]}. My
   answer: {... [5, 4]}`` is (5, 4)). Several readable candidates that disagree are flagged
   ``conflicting_answers``. An object still open at the end of the text, after the last candidate, means the final
   answer was cut off → ``parse_error`` ("truncated?"), never the earlier example.
3. Near-JSON is repaired, string-aware: single-quoted strings, trailing commas, Python ``True/False/None``, bare
   keys. Scores may be numeric strings (``"20"``, ``"20/25"``); boxes may be strings (``"[1, 2, 3, 4]"``).
4. Scores: exactly two finite numbers on the scale the prompt asked for (``score_range``, 25 by default). Answers
   on another scale are converted to 0–25 only when the scale is explicit — a prompt with ``score_range`` 10
   (flag ``scores_rescaled``), or a value written ``"8/10"`` (flag ``scores_rescaled``); a value above its scale
   is a ``parse_error``. A bare 8 under a 0–25 prompt is read as 8/25: a model that silently answers on 0–10 cannot
   be told from one answer (the label report warns when no score of a run exceeds 10).
5. Boxes: all boxes of one answer share a frame. Within 0–1000 (a model may overshoot by up to
   `BOX_OVERSHOOT`, which is clamped) they are read as 0–1000. Beyond that, when the edited image's size is known
   and every box fits inside it, they are pixel coordinates: converted to 0–1000 (flag ``boxes_from_pixels``).
   Otherwise their frame is unknown → ``parse_error``. (Pixel boxes of an image smaller than 1000 px cannot be
   told from 0–1000 ones; the prompts ask for 0–1000.) Corners are ordered; boxes thinner than `MIN_BOX_SIDE` are
   dropped with a warning and counted in ``boxes_dropped``. A region whose box cannot be read at all is a
   ``parse_error`` (we will not guess where it was).
6. An SC answer whose boxes were **all** dropped while its scores say an edit happened (instruction following
   above 0, or consistency below 25) is a ``parse_error``: the edit region is unknown, and ``boxes = []`` would
   teach the student "nothing was edited". A model's own empty ``edit_region`` is its answer and stays ``ok``.
7. There is no default: the upstream scorer fills 12.5 for an unreadable score, we never do.

Every outcome is a `ParsedAnswer` with ``status`` ``ok`` or ``parse_error``, the reason in ``error``, small
repairs listed in ``warnings`` and conversions a label user may want to filter on in ``flags`` (see `FLAGS`).
The raw text is kept by the caller.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from spatialreward.types import BOX_SCALE, SCORE_MAX

CallType = Literal["sc", "pq"]
MIN_BOX_SIDE = 1.0  # in 0–1000 units (0.1% of the image side): thinner boxes carry no area and are dropped
MAX_ANSWER_CHARS = 200_000  # longer answers are not model output we can trust; refuse rather than scan forever
MAX_CANDIDATES = 256  # balanced {…} spans tried per answer; bounds the scan on brace-heavy garbage
BOX_OVERSHOOT = 50.0  # 0–1000 units (5 %): a box this far past the frame is clamped; further, the frame is wrong
PIXEL_SLACK = 0.05  # pixel boxes may pass the sent image's size by 5 % (servers resize to patch multiples)

# What ``ParsedAnswer.flags`` may hold: the answer was read, but not as the prompt asked.
FLAGS = {
    "conflicting_answers": "several complete answers that disagree; the last one was taken",
    "boxes_from_pixels": "boxes in pixel coordinates of the edited image, converted to 0–1000",
    "scores_rescaled": "scores on another scale (the prompt's score_range or an explicit /N), converted to 0–25",
}

_SCORE_KEYS = ("score", "scores")
_REGION_KEYS = ("edit_region", "edit_regions", "regions")
_REASONING_KEYS = ("reasoning", "reason", "rationale")
_BOX_KEYS = ("bbox_2d", "bbox", "box")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:/\s*(\d+(?:\.\d*)?))?\s*$")
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
    flags: list[str] = field(default_factory=list)  # keys of `FLAGS`
    boxes_dropped: int = 0  # SC boxes given by the model but not kept (degenerate after clamping / conversion)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class AnswerError(ValueError):
    """Why an answer could not be read; becomes ``ParsedAnswer.error``."""


# ---------------------------------------------------------------------------------------------------------------
# Front doors
# ---------------------------------------------------------------------------------------------------------------


def parse_sc(text: str, **options: Any) -> ParsedAnswer:
    """Read an SC answer: edit regions, reasoning, [instruction_following, consistency]."""
    return parse_answer(text, "sc", **options)


def parse_pq(text: str, **options: Any) -> ParsedAnswer:
    """Read a PQ answer: reasoning, [naturalness, artifacts]. Regions, if the model adds any, are ignored."""
    return parse_answer(text, "pq", **options)


def parse_answer(
    text: str, call: CallType, *, image_size: tuple[int, int] | None = None, score_range: float = SCORE_MAX
) -> ParsedAnswer:
    """Read one answer of either call; never raises for bad model output.

    Arguments:
        text: the model's answer.
        call: ``sc`` or ``pq``.
        image_size: ``(width, height)`` of the edited image as sent; lets boxes beyond 0–1000 be read as pixels.
        score_range: the top of the score scale the prompt asked for (25; 10 for a 0–10 prompt).
    """
    if not score_range > 0:
        raise ValueError(f"score_range={score_range} must be > 0")
    warnings: list[str] = []
    try:
        candidates = extract_json_objects(text, warnings)
    except AnswerError as exc:
        return ParsedAnswer(call=call, status="parse_error", error=str(exc), warnings=warnings)
    read: list[ParsedAnswer] = []
    last_error: AnswerError | None = None
    for obj in candidates:
        try:
            read.append(_read_answer(obj, call, image_size, score_range))
        except AnswerError as exc:
            last_error = exc
    if not read:
        error = str(last_error) if last_error else "no JSON object in the answer"
        return ParsedAnswer(call=call, status="parse_error", error=error, warnings=warnings)
    final = read[-1]
    final.warnings = warnings + final.warnings
    if len(candidates) > len(read):
        final.warnings.append(f"{len(candidates) - len(read)} other answer object(s) could not be read; ignored")
    distinct = {(a.scores, tuple(map(tuple, a.boxes))) for a in read}
    if len(distinct) > 1:
        final.flags.append("conflicting_answers")
        final.warnings.append(
            f"{len(read)} complete answers that disagree (scores {[a.scores for a in read]}); took the last"
        )
    return final


def _read_answer(
    obj: dict[str, Any], call: CallType, image_size: tuple[int, int] | None, score_range: float
) -> ParsedAnswer:
    """One candidate object read as an answer of ``call``, or `AnswerError`."""
    warnings: list[str] = []
    flags: list[str] = []
    scores = _read_scores(obj, score_range, flags)
    reasoning = _read_reasoning(obj)
    boxes: list[list[float]] = []
    labels: list[str] = []
    ids: list[str] = []
    dropped = 0
    if call == "sc":
        boxes, labels, ids, dropped = _read_regions(obj, warnings, flags, image_size)
        if dropped and not boxes and _says_edited(scores):
            raise AnswerError(
                f"{'the only box was' if dropped == 1 else f'all {dropped} boxes were'} dropped (degenerate or out "
                f"of the image) while the scores "
                f"{list(scores)} say an edit happened: the edit region is unknown"
            )
        uncited = sorted({m for m in _BBOX_REF.findall(reasoning) if m not in ids}, key=int)
        if uncited:
            warnings.append(f"reasoning cites <|bbox_{uncited[0]}|>, which is not among the kept regions {ids}")
    return ParsedAnswer(
        call=call, status="ok", scores=scores, boxes=boxes, region_labels=labels, region_ids=ids,
        reasoning=reasoning, warnings=warnings, flags=flags, boxes_dropped=dropped,
    )


def _says_edited(sc_scores: tuple[float, float]) -> bool:
    """SC scores of a visible edit: some of the instruction was carried out, or something else changed."""
    instruction_following, consistency = sc_scores
    return instruction_following > 0 or consistency < SCORE_MAX


# ---------------------------------------------------------------------------------------------------------------
# Finding the objects
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


def extract_json_objects(text: str, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """The answer's candidate objects (keys lower-cased), in order: complete top-level objects with a ``score``.

    Raises `AnswerError` for an empty, overlong or truncated answer, or one without any object. When objects
    exist but none has a ``score``, the first one is returned alone, so the score reader names what is missing.
    """
    warnings = warnings if warnings is not None else []
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("empty answer")
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerError(f"answer is {len(text):,} characters, more than the {MAX_ANSWER_CHARS:,} we read")
    body = strip_think(text)
    candidates: list[dict[str, Any]] = []
    first_object: dict[str, Any] | None = None
    outer_end = 0  # end of the furthest balanced span seen: an unclosed "{" before it lies inside that span
    start, tried = body.find("{"), 0
    while start != -1 and tried < MAX_CANDIDATES:
        tried += 1
        end = _span_end(body, start)
        if end is None:
            if start >= outer_end:  # open until the end of the text: the last object was cut off
                what = "the final answer" if candidates else "the answer"
                raise AnswerError(f"no complete JSON object at the end: {what} was truncated (raise max_new_tokens?)")
            start = body.find("{", start + 1)
            continue
        outer_end = max(outer_end, end)
        obj = _loads_lenient(body[start:end], warnings)
        if isinstance(obj, dict):
            obj = _lower_keys(obj)
            if any(k in obj for k in _SCORE_KEYS):
                candidates.append(obj)
                start = body.find("{", end)  # an answer's inner objects are its own parts, not answers
                continue
            first_object = first_object or obj
        start = body.find("{", start + 1)  # not an answer: look inside it (a wrapper may hold one)
    if candidates:
        return candidates
    if first_object is not None:
        return [first_object]  # no object has a score: the score reader names what is missing
    raise AnswerError("no JSON object in the answer")


def extract_json_object(text: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """The final candidate object of an answer (see `extract_json_objects`)."""
    return extract_json_objects(text, warnings)[-1]


def _lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _span_end(text: str, start: int) -> int | None:
    """End (exclusive) of the balanced ``{…}`` opening at ``start``, or None when it never closes.

    Strings in either quote style are skipped, so braces inside reasoning text do not count.
    """
    depth, quote, escaped = 0, None, False
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
                return i + 1
    return None


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
    return _as_scored_number(value, what)[0]


def _as_scored_number(value: Any, what: str) -> tuple[float, float | None]:
    """``(value, denominator)``: ``"8/10"`` → (8, 10); a plain number has no denominator."""
    if isinstance(value, bool):
        raise AnswerError(f"{what} is a boolean ({value}), expected a number")
    denominator = None
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str) and (m := _NUMBER.match(value)):
        v = float(m.group(1))
        if m.group(2) is not None:
            denominator = float(m.group(2))
            if not denominator > 0:
                raise AnswerError(f"{what} = {value!r} divides by zero")
    else:
        raise AnswerError(f"{what} = {value!r} is not a number")
    if not math.isfinite(v):
        raise AnswerError(f"{what} = {v} is not finite")
    return v, denominator


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


def _read_scores(obj: dict[str, Any], score_range: float, flags: list[str]) -> tuple[float, float]:
    """Two scores on 0–25; a scale other than 25 (the prompt's, or an explicit /N) is converted and flagged."""
    found, raw = _first_key(obj, _SCORE_KEYS)
    if not found:
        raise AnswerError(f"no 'score' in the answer (keys: {sorted(obj)})")
    values = _as_list(raw, "score")
    if len(values) != 2:
        raise AnswerError(f"score has {len(values)} values {values!r}, expected 2")
    scores = []
    for i, value in enumerate(values):
        v, denominator = _as_scored_number(value, f"score[{i}]")
        scale = denominator if denominator is not None else score_range
        if not 0.0 <= v <= scale:
            raise AnswerError(f"score[{i}] = {v:g} is outside 0–{scale:g}")
        if scale != SCORE_MAX:
            v = v * SCORE_MAX / scale
            if "scores_rescaled" not in flags:
                flags.append("scores_rescaled")
        scores.append(v)
    return scores[0], scores[1]


def _read_reasoning(obj: dict[str, Any]) -> str:
    _, raw = _first_key(obj, _REASONING_KEYS)
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)


def _read_regions(
    obj: dict[str, Any], warnings: list[str], flags: list[str], image_size: tuple[int, int] | None
) -> tuple[list[list[float]], list[str], list[str], int]:
    """``(boxes in 0–1000, labels, ids, boxes dropped)`` of an SC answer (module docstring, step 5)."""
    found, raw = _first_key(obj, _REGION_KEYS)
    if not found:
        raise AnswerError(f"no 'edit_region' in the SC answer (keys: {sorted(obj)})")
    if raw is None:
        warnings.append("edit_region is null; read as no regions")
        return [], [], [], 0
    if isinstance(raw, dict):  # a single region not wrapped in a list
        raw = [raw]
        warnings.append("edit_region is one object, not a list")
    if isinstance(raw, str):
        raise AnswerError(f"edit_region is a string ({raw[:60]!r}), expected a list of regions")
    if not isinstance(raw, list):
        raise AnswerError(f"edit_region is {type(raw).__name__}, expected a list of regions")
    given: list[tuple[list[float], str, str]] = []
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
        given.append(([_as_number(v, f"edit_region[{index}].bbox_2d") for v in values], label, region_id))
    to_unit = _box_frame([b for b, _, _ in given], image_size, flags)
    boxes, labels, ids = [], [], []
    for index, (values, label, region_id) in enumerate(given):
        box = _clean_box(to_unit(values), values, index, warnings)
        if box is None:
            continue
        boxes.append(box)
        labels.append(label)
        ids.append(region_id)
    return boxes, labels, ids, len(given) - len(boxes)


def _box_frame(boxes: list[list[float]], image_size: tuple[int, int] | None, flags: list[str]):
    """The conversion of this answer's boxes to 0–1000: identity, pixels → 0–1000, or `AnswerError`."""
    if not boxes:
        return lambda b: b
    xs = [v for b in boxes for v in (b[0], b[2])]
    ys = [v for b in boxes for v in (b[1], b[3])]
    low, high = -BOX_OVERSHOOT, BOX_SCALE + BOX_OVERSHOOT
    if min(xs + ys) >= low and max(xs + ys) <= high:
        return lambda b: b
    if image_size is not None and min(xs + ys) >= low:
        width, height = image_size
        if max(xs) <= width * (1 + PIXEL_SLACK) and max(ys) <= height * (1 + PIXEL_SLACK):
            flags.append("boxes_from_pixels")
            return lambda b: [b[0] * BOX_SCALE / width, b[1] * BOX_SCALE / height,
                              b[2] * BOX_SCALE / width, b[3] * BOX_SCALE / height]
    size = f"the {image_size[0]}×{image_size[1]} image" if image_size else "the image (size unknown)"
    raise AnswerError(
        f"boxes reach x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}: beyond 0–1000 and beyond {size}, "
        "so their frame is unknown"
    )


def _clean_box(box: list[float], original: list[float], index: int, warnings: list[str]) -> list[float] | None:
    """Order corners, clamp to 0–1000, drop boxes thinner than `MIN_BOX_SIDE` (with a warning each)."""
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        warnings.append(f"edit_region[{index}] corners out of order; reordered")
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    clamped = [min(max(v, 0.0), BOX_SCALE) for v in (x1, y1, x2, y2)]
    if clamped != [x1, y1, x2, y2]:
        warnings.append(f"edit_region[{index}] = {original} clamped to 0–1000")
    if clamped[2] - clamped[0] < MIN_BOX_SIDE or clamped[3] - clamped[1] < MIN_BOX_SIDE:
        warnings.append(f"edit_region[{index}] = {original} is degenerate after clamping; dropped")
        return None
    return clamped
