"""Readers for public reward-benchmark record formats (EditReward-Bench, MER-Bench) into our `EditSample`s.

- **EditReward-Bench** (as distributed with SpatialReward's evaluation): JSONL records with ``idx``,
  ``instruction``, ``task_type``, ``dimension`` (prompt_following / consistency / overall), ``input_image``,
  ``output_images`` (two paths; the first is the preferred one) and ``key``. One record → a group of two samples
  whose ``meta["rank"]`` is 0 for the preferred edit and 1 for the other.
- **MER-Bench style ranked groups**: an instruction, one original image and 2–4 edited images ordered best → worst,
  with a category. Field names vary between releases, so a few spellings are accepted (see `MERRecord`).

Each record is validated; a bad one is reported by file and line and skipped (or raises with ``strict=True``), as
for our own dataset files. Image paths are resolved against ``image_root`` (default: the JSONL's folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from spatialreward.dataset import DatasetError, ReadReport, iter_jsonl
from spatialreward.types import EditSample, resolve_path

Dimension = Literal["prompt_following", "consistency", "overall"]


class EditRewardBenchRecord(BaseModel):
    """One EditReward-Bench pair: ``output_images[0]`` is preferred over ``output_images[1]``."""

    model_config = ConfigDict(extra="allow")

    idx: int | str
    instruction: str = Field(min_length=1)
    task_type: str = ""
    dimension: Dimension
    input_image: str = Field(min_length=1)
    output_images: list[str] = Field(min_length=2, max_length=2)
    key: str | None = None


class MERRecord(BaseModel):
    """One ranked group: ``edited_images`` best → worst (2–4 of them)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str | int | None = Field(default=None, validation_alias=AliasChoices("id", "idx", "key", "group_id"))
    instruction: str = Field(min_length=1, validation_alias=AliasChoices("instruction", "prompt", "edit_instruction"))
    original_image: str = Field(
        min_length=1,
        validation_alias=AliasChoices("original_image", "source_image", "input_image", "original", "source"),
    )
    edited_images: list[str] = Field(
        min_length=2,
        max_length=4,
        validation_alias=AliasChoices("edited_images", "output_images", "ranked_images", "edits", "candidates"),
    )
    category: str = Field(default="", validation_alias=AliasChoices("category", "task_type", "edit_type"))

    @field_validator("edited_images")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("edited_images repeats a path; a ranking needs distinct edits")
        return v


def _iter_records(path: Path, model: type[BaseModel], strict: bool, report: ReadReport):
    if not path.exists():
        raise DatasetError(f"{path}: file does not exist")
    return iter_jsonl(path, model, strict=strict, report=report)


def _ranked_group(benchmark: str, group: str, root: Path, source: str, editeds: list[str], instruction: str,
                  **meta) -> list[EditSample]:
    """One sample per edit of a ranked group, best first: ``meta["rank"]`` is its place (0 = best)."""
    return [
        EditSample(
            sample_id=f"{group}-{rank}",
            source=str(resolve_path(root, source)),
            edited=str(resolve_path(root, edited)),
            instruction=instruction,
            group_id=group,
            meta={"benchmark": benchmark, "rank": rank, **meta},
        )
        for rank, edited in enumerate(editeds)
    ]


def read_editreward_bench(
    path: str | Path, *, image_root: str | Path | None = None, strict: bool = False, report: ReadReport | None = None
) -> list[EditSample]:
    """EditReward-Bench JSONL → samples, two per record (rank 0 = preferred). Groups are ``erb-<key or idx>``."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    report = report if report is not None else ReadReport()
    samples: list[EditSample] = []
    for lineno, rec in _iter_records(path, EditRewardBenchRecord, strict, report):
        group = f"erb-{rec.key if rec.key else rec.idx}-{rec.dimension}"
        samples += _ranked_group("editreward-bench", group, root, rec.input_image, rec.output_images, rec.instruction,
                                 dimension=rec.dimension, task_type=rec.task_type, line=lineno)
    return samples


def read_mer_bench(
    path: str | Path, *, image_root: str | Path | None = None, strict: bool = False, report: ReadReport | None = None
) -> list[EditSample]:
    """MER-Bench-style ranked groups JSONL → samples, ``meta["rank"]`` 0 = best. Groups are ``mer-<id or line>``."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    report = report if report is not None else ReadReport()
    samples: list[EditSample] = []
    for lineno, rec in _iter_records(path, MERRecord, strict, report):
        group = f"mer-{rec.id if rec.id is not None else lineno}"
        samples += _ranked_group("mer-bench", group, root, rec.original_image, rec.edited_images, rec.instruction,
                                 category=rec.category, line=lineno)
    return samples


READERS = {"editreward-bench": read_editreward_bench, "mer-bench": read_mer_bench}
