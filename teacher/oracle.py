"""The oracle teacher: exact labels for synthetic edits, read from the ground truth `spatialreward synth` wrote.

It implements the same `Teacher` protocol as the VLM teacher, so labeling, distillation and evaluation run the
embedded default without a model: boxes and sub-scores come from ``sample.meta["truth"]``, the reward from the
shared formula (`Judgement.from_subscores`), and the reasoning is a short sentence in the real teacher's style,
citing regions as ``<|bbox_0|>``, ``<|bbox_1|>``, … in the order of the boxes. A sample without usable truth gets a
``failed`` judgement naming the sample and the reason; the batch goes on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spatialreward.types import EditSample, Judgement

ORACLE_NAME = "oracle"
ORACLE_PROMPT_VERSION = "oracle-v1"


class TruthError(ValueError):
    """A sample's ``meta["truth"]`` is missing or malformed."""


def _truth(sample: EditSample) -> tuple[list[list[float]], list[float]]:
    truth = sample.meta.get("truth") if isinstance(sample.meta, dict) else None
    if not isinstance(truth, dict):
        raise TruthError("no meta['truth'] (the oracle labels only synthetic samples written by `spatialreward synth`)")
    boxes, subscores = truth.get("boxes"), truth.get("subscores")
    if not isinstance(boxes, list) or not all(isinstance(b, (list, tuple)) for b in boxes):
        raise TruthError(f"meta['truth']['boxes'] must be a list of [x1, y1, x2, y2], got {boxes!r:.80}")
    if not isinstance(subscores, list) or len(subscores) != 4:
        raise TruthError(f"meta['truth']['subscores'] must be a list of 4 numbers, got {subscores!r:.80}")
    try:
        return [[float(v) for v in b] for b in boxes], [float(v) for v in subscores]
    except (TypeError, ValueError) as exc:
        raise TruthError(f"meta['truth'] holds a non-number ({exc})") from exc


def _refs(n: int) -> str:
    return " ".join(f"<|bbox_{i}|>" for i in range(n))


def reasoning(meta: dict[str, Any], n_boxes: int) -> str:
    """A one- or two-sentence verdict in the teacher's style, from the sample's kind and edit description."""
    kind = meta.get("kind", "")
    target = meta.get("target") or "the requested region"
    asked = meta.get("attribute") or "the requested change"
    got = meta.get("applied") or asked
    params = meta.get("params") or {}
    op = meta.get("operation", "")
    lead = f"{_refs(n_boxes)} " if n_boxes else ""
    if op == "tone":
        done = f"the whole image is now {asked}"
    elif op == "remove":
        done = f"{target} is removed"
    elif op == "add":
        done = f"{got} was added {meta.get('position', '')}".rstrip()
    elif op == "background":
        done = f"the background is now {asked}"
    else:
        done = f"{target} is now {asked}"
    if kind == "correct":
        return f"{lead}{done}, as asked; the rest of the image is unchanged."
    if kind == "partial":
        how = "only part of the region was changed" if params.get("partial") == "cut" else "the change is faint"
        return f"{lead}the edit is incomplete: {how}."
    if kind == "no_op":
        return "No visible edit: the image is the same as the source."
    if kind == "over_edit":
        return f"{lead}{done}, but another area was changed as well, which was not asked for."
    if kind == "artifacts":
        return f"{lead}{done}, but the result shows {params.get('artifact', 'visual')} artifacts."
    if kind == "wrong_attribute":
        return f"{lead}the right place was edited, but it became {got} instead of {asked}."
    if kind == "wrong_region":
        return f"{lead}the change was applied to the wrong region, not to {target}."
    if kind == "region_only":
        return f"{lead}the tone change covers only one area instead of the whole image."
    if kind == "global":
        return f"{lead}{done}, but the whole image was altered too ({params.get('global', 'a global change')})."
    if kind == "overdone":
        return f"{lead}the whole image is {asked}, but far too strongly: colours and tones are exaggerated."
    return f"{lead}{done}."


class OracleTeacher:
    """Judges synthetic samples exactly, from ``meta["truth"]``. Needs no model, no GPU, no network."""

    name = ORACLE_NAME
    prompt_version = ORACLE_PROMPT_VERSION

    def judge(self, sample: EditSample) -> Judgement:
        """One sample's judgement; never raises (a sample without usable truth → ``failed``)."""
        try:
            boxes, subscores = _truth(sample)
            meta = sample.meta
            return Judgement.from_subscores(
                sample.sample_id, self.name, subscores, boxes, prompt_version=self.prompt_version,
                reasoning=reasoning(meta, len(boxes)),
                raw_text=json.dumps({"boxes": boxes, "subscores": subscores}),
            )
        except (TruthError, ValidationError, ValueError) as exc:
            reason = str(exc).replace("\n", "; ")
            return Judgement.failure(
                sample.sample_id, self.name, "failed", f"sample {sample.sample_id!r}: {reason}",
                prompt_version=self.prompt_version,
            )

    def judge_batch(self, samples: Sequence[EditSample], root: str | Path) -> list[Judgement]:
        """One judgement per sample, in order. ``root`` is unused: the truth is in the records, not the images."""
        return [self.judge(s) for s in samples]
