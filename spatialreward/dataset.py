"""Dataset I/O: a dataset is a folder; this module reads and writes it and validates every record.

Layout::

    DIR/
      samples.jsonl                 one EditSample per line; image paths relative to DIR
      images/...                    whatever the producer wrote (synthetic sets: images/<group>/...)
      labels/<teacher>/part-00000.jsonl | .parquet   label shards, one Judgement per line / row

Readers validate each record; a bad one is reported by file and line and skipped, unless ``strict=True``, when
the first bad record raises `DatasetError`. Shards are written atomically (temp file + rename), so a killed
writer leaves either a whole shard or none.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from spatialreward.types import EditSample, Judgement, resolve_path

SAMPLES_FILE = "samples.jsonl"
LABELS_DIR = "labels"
ShardFormat = Literal["jsonl", "parquet"]
_SHARD_RE = re.compile(r"^part-(\d{5,})\.(jsonl|parquet)$")

M = TypeVar("M", bound=BaseModel)


class DatasetError(ValueError):
    """A dataset file or record that cannot be used; the message names the file, the line and the reason."""


@dataclass
class RecordError:
    """One bad record: where it is and why it was refused."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ReadReport:
    """What a reader kept and what it refused."""

    errors: list[RecordError] = field(default_factory=list)
    records: int = 0

    @property
    def bad(self) -> int:
        return len(self.errors)


def validation_reason(exc: Exception) -> str:
    """A one-line reason for a failed record: field paths and messages for pydantic errors."""
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"]) or "record"
            parts.append(f"{loc}: {e['msg']}")
        return "; ".join(parts)
    return str(exc)


def iter_jsonl(
    path: str | Path, model: type[M], *, strict: bool = False, report: ReadReport | None = None
) -> Iterator[tuple[int, M]]:
    """Yield ``(line_number, record)`` for each line of a JSONL file that validates as ``model``.

    Blank lines are skipped; bad lines — invalid UTF-8 included — go to ``report`` (or raise `DatasetError` naming
    the file and line when ``strict``). A file that cannot be opened raises `DatasetError`.
    """
    path = Path(path)
    report = report if report is not None else ReadReport()
    try:
        fh = open(path, "rb")  # bytes: each line is decoded inside the per-line try, so one bad byte is one bad line
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"invalid UTF-8 at byte {exc.start} of the line ({raw[max(0, exc.start - 8):exc.end + 8]!r})"
                err = RecordError(str(path), lineno, reason)
                if strict:
                    raise DatasetError(str(err)) from exc
                report.errors.append(err)
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                record = model.model_validate(obj)
            except (ValueError, ValidationError) as exc:
                err = RecordError(str(path), lineno, validation_reason(exc))
                if strict:
                    raise DatasetError(str(err)) from exc
                report.errors.append(err)
                continue
            report.records += 1
            yield lineno, record


def read_jsonl(
    path: str | Path, model: type[M], *, strict: bool = False, report: ReadReport | None = None
) -> list[M]:
    """All valid records of a JSONL file (see `iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, model, strict=strict, report=report)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write whole; it is renamed onto ``path`` when the block ends without an
    error and removed otherwise, so a reader (or a crash) only ever sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a dataset or model file reads like any other file
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_path`), synced to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_jsonl(path: str | Path, records: Iterable[BaseModel]) -> Path:
    """Write pydantic records as JSONL, atomically."""
    path = Path(path)
    data = "".join(r.model_dump_json() + "\n" for r in records).encode("utf-8")
    atomic_write_bytes(path, data)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------------------------


def write_samples(root: str | Path, samples: Iterable[EditSample]) -> Path:
    """Write ``root/samples.jsonl`` atomically; sample ids must be unique."""
    samples = list(samples)
    seen: set[str] = set()
    for s in samples:
        if s.sample_id in seen:
            raise DatasetError(f"duplicate sample_id {s.sample_id!r}")
        seen.add(s.sample_id)
    return write_jsonl(Path(root) / SAMPLES_FILE, samples)


def read_samples(
    root: str | Path,
    *,
    split: str | None = None,
    strict: bool = False,
    report: ReadReport | None = None,
) -> list[EditSample]:
    """Read ``root/samples.jsonl``; keep only ``split`` when given. Duplicate ids are bad records too."""
    root = Path(root)
    path = root / SAMPLES_FILE
    if not path.exists():
        raise DatasetError(f"{root}: no {SAMPLES_FILE} (is this a dataset folder? `spatialreward synth` makes one)")
    report = report if report is not None else ReadReport()
    samples = read_jsonl(path, EditSample, strict=strict, report=report)
    seen: set[str] = set()
    unique = []
    for s in samples:
        if s.sample_id in seen:
            err = RecordError(str(path), 0, f"duplicate sample_id {s.sample_id!r} (kept the first)")
            if strict:
                raise DatasetError(str(err))
            report.errors.append(err)
            continue
        seen.add(s.sample_id)
        unique.append(s)
    if split is not None:
        unique = [s for s in unique if s.split == split]
    return unique


class OutsideRootError(DatasetError):
    """A sample's image path leaves the dataset folder (absolute, or through ``..``) and that was not allowed."""


def sample_image_path(
    root: str | Path, path: str, *, allow_outside_root: bool = False, name: str | None = None
) -> Path:
    """The file a sample's image ``path`` names, confined to the dataset folder ``root``.

    A dataset file is data, not a command: a relative path without ``..`` is all it may say, so it cannot make a
    reader open (and a remote teacher upload) an arbitrary file. Absolute paths and ``..`` are accepted only with
    ``allow_outside_root`` (e.g. for a `spatialreward convert`ed benchmark, whose paths are absolute). The check is
    on the path as written; links placed inside the folder by its owner are followed. ``name`` (e.g.
    ``"g0-e1: source"``) leads the error message.
    """
    lead = f"{name}: " if name else ""
    p = Path(path)
    if not allow_outside_root:
        if p.is_absolute() or p.drive or p.anchor:
            raise OutsideRootError(
                f"{lead}image path {path!r} is absolute; dataset paths must be relative to {root} (pass "
                "--allow-outside-root / allow_outside_root=True if you trust this dataset)"
            )
        if ".." in p.parts:
            raise OutsideRootError(
                f"{lead}image path {path!r} climbs out of {root} with '..' (pass --allow-outside-root / "
                "allow_outside_root=True if you trust this dataset)"
            )
    return resolve_path(root, p)


def group_samples(samples: Sequence[EditSample]) -> OrderedDict[str, list[EditSample]]:
    """Samples by ``group_id``, groups in first-seen order, members in file order."""
    groups: OrderedDict[str, list[EditSample]] = OrderedDict()
    for s in samples:
        groups.setdefault(s.group_id, []).append(s)
    return groups


# ---------------------------------------------------------------------------------------------------------------
# Label shards
# ---------------------------------------------------------------------------------------------------------------


def teacher_dirname(teacher: str) -> str:
    """A folder name for a teacher name (``vlm:org/model`` → ``vlm_org_model``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", teacher).strip("._")
    return name or "teacher"


def labels_dir(root: str | Path, teacher: str) -> Path:
    return Path(root) / LABELS_DIR / teacher_dirname(teacher)


def list_shards(directory: str | Path) -> list[Path]:
    """Label shards in a folder, in shard-number order (temp files of a killed writer are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    shards = [p for p in directory.iterdir() if _SHARD_RE.match(p.name)]
    return sorted(shards, key=lambda p: int(_SHARD_RE.match(p.name).group(1)))


def next_shard_path(directory: str | Path, fmt: ShardFormat = "jsonl") -> Path:
    shards = list_shards(directory)
    n = int(_SHARD_RE.match(shards[-1].name).group(1)) + 1 if shards else 0
    return Path(directory) / f"part-{n:05d}.{fmt}"


def write_label_shard(path: str | Path, judgements: Sequence[Judgement]) -> Path:
    """Write one shard atomically; the format follows the suffix (``.jsonl`` or ``.parquet``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return write_jsonl(path, judgements)
    if path.suffix == ".parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([j.model_dump(mode="json") for j in judgements])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(path, buf.getvalue())
        return path
    raise DatasetError(f"{path}: unknown shard format {path.suffix!r} (use .jsonl or .parquet)")


def _read_parquet_shard(path: Path, strict: bool, report: ReadReport) -> list[Judgement]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 — a damaged file raises ArrowInvalid, OSError, ... depending on the damage
        raise DatasetError(f"{path}: unreadable Parquet shard ({type(exc).__name__}: {exc})") from exc
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            out.append(Judgement.model_validate(row))
            report.records += 1
        except ValidationError as exc:
            err = RecordError(str(path), i, validation_reason(exc))
            if strict:
                raise DatasetError(str(err)) from exc
            report.errors.append(err)
    return out


def read_label_shards(
    directory: str | Path, *, strict: bool = False, report: ReadReport | None = None
) -> list[Judgement]:
    """All judgements in a label folder, shard by shard (JSONL and Parquet may be mixed).

    A shard that cannot be read at all (damaged Parquet, no permission) is one error in ``report`` with line 0,
    and the other shards are still read; with ``strict`` it raises `DatasetError` naming the file.
    """
    report = report if report is not None else ReadReport()
    out: list[Judgement] = []
    for shard in list_shards(directory):
        try:
            if shard.suffix == ".jsonl":
                out.extend(read_jsonl(shard, Judgement, strict=strict, report=report))
            else:
                out.extend(_read_parquet_shard(shard, strict, report))
        except DatasetError as exc:
            if strict:
                raise
            reason = str(exc).removeprefix(f"{shard}: ")
            report.errors.append(RecordError(str(shard), 0, f"whole shard skipped: {reason}"))
    return out


def read_labels(
    root: str | Path, teacher: str, *, strict: bool = False, report: ReadReport | None = None
) -> dict[str, Judgement]:
    """Judgements of one teacher keyed by ``sample_id`` (a later shard wins on a repeated id)."""
    directory = labels_dir(root, teacher)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no labels for teacher {teacher!r} (run `spatialreward label` first)")
    return {j.sample_id: j for j in read_label_shards(directory, strict=strict, report=report)}
