"""The labeling pipeline: every sample of a dataset → one `Judgement`, in atomic shards, resumable.

Guarantees, in the order the code provides them:

- **One writer per label folder.** A lock file (pid + host) refuses a second concurrent run; a lock left by a
  killed run (its pid is gone) is taken over.
- **Resume, never a mix.** Sample ids already in the folder's shards are skipped, so a run killed at any moment
  (even ``kill -9``) loses at most the judgements not yet written and never writes one twice. ``redo_failed``
  relabels samples whose latest record is ``failed`` (no answer at all); the new record supersedes the old one.
  A folder belongs to one teacher identity (checkpoint folder or server URL + model) and one prompt version,
  written to ``teacher.json`` by its first run: a run with another teacher or another ``--prompt-file`` is refused
  with both named, as is a folder holding records of another prompt version, so labels never mix silently.
- **Damaged shards.** An existing shard that cannot be read (invalid UTF-8, damaged Parquet, a bad record) is
  reported per line / per shard and its samples are labelled again; with ``strict`` the first one stops the run
  with the file and line.
- **Atomic shards.** Judgements are buffered and written ``shard_size`` at a time through
  `spatialreward.dataset.write_label_shard` (temp file + rename): a shard exists whole or not at all.
- **GRPO groups together.** Work runs group by group (`group_samples`), so the edits of one source + instruction
  reach the teacher back to back (a vLLM server reuses their common prompt prefix).
- **Every sample accounted for.** A teacher crash on a batch marks that batch ``failed`` with the reason (three
  crashes in a row stop the run: something is broken, not one sample); the report counts ok / parse_error /
  failed per judgement and per call (SC, PQ) for VLM teachers.

``limit`` keeps the first N samples in group order *before* skipping labelled ones, so rerunning the same
command finishes the same N samples instead of labelling N more.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from spatialreward.dataset import (
    DatasetError,
    ReadReport,
    ShardFormat,
    atomic_write_bytes,
    group_samples,
    labels_dir,
    next_shard_path,
    read_label_shards,
    read_samples,
    write_label_shard,
)
from spatialreward.teacher.base import Teacher, teacher_identity
from spatialreward.types import EditSample, Judgement

LOCK_NAME = ".labeling.lock"
MANIFEST_NAME = "teacher.json"  # who wrote this label folder: teacher name, identity, prompt version
CRASH_PREFIX = "teacher raised "
MAX_CONSECUTIVE_CRASHES = 3
STATUSES = ("ok", "parse_error", "failed")
SCALE_CHECK_MIN_OK = 20  # ok labels before "no score above 10" is worth a warning


# ---------------------------------------------------------------------------------------------------------------
# The knobs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LabelConfig:
    """How a labeling run goes (what the teacher is told is `TeacherConfig`). ``spatialreward label`` has one flag
    per field.

    Shards:
        shard_size: judgements per shard file; at most this many are lost to a ``kill -9``.
        format: ``jsonl`` or ``parquet`` shards.
    What to label:
        split: only samples of this split.
        limit: only the first N samples in group order (see the module docstring).
        redo_failed: label again the samples whose latest record is ``failed``.
        batch_size: samples per ``judge_batch`` call (default: the teacher's ``batch_size``, else 16).
    Errors and output:
        strict: stop at the first bad sample record or unreadable label shard (file and line) instead of reporting
            it and going on.
        progress: a progress bar with edits/s and the running parse-failure rate.
    Ray mode (`ray_pipeline.label_dataset_ray`):
        ray: ``local`` (a private Ray here), ``auto`` (this machine's cluster) or an address; None: no Ray.
        ray_actors: teachers in the actor pool (default: one per GPU for ``vlm:``, 2 for ``openai:``).
        ray_cpus: CPUs of a Ray started here.
        ray_gpus_per_actor: GPUs per actor (default: 1 for ``vlm:`` on a cluster with GPUs, else 0).
    """

    # Shards
    shard_size: int = field(default=256, metadata={"help": "Judgements per shard file (at most this many lost to "
                                                           "a crash)."})
    format: ShardFormat = field(default="jsonl", metadata={"help": "Shard format."})
    # What to label
    split: str | None = field(default=None, metadata={"help": "Only samples of this split."})
    limit: int | None = field(default=None, metadata={"help": "Label only the first N samples in group order."})
    redo_failed: bool = field(default=False, metadata={"help": "Label again samples whose latest record is "
                                                                "'failed'."})
    batch_size: int | None = field(
        default=None, metadata={"help": "Samples per teacher call, and requests per generate() for vlm: teachers "
                                        "(default: the teacher's)."}
    )
    # Errors and output
    strict: bool = field(default=False, metadata={"help": "Stop at the first bad sample line or unreadable label "
                                                           "shard instead of reporting it and going on."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with edits/s and parse failures."})
    # Ray mode
    ray: str | None = field(
        default=None, metadata={"help": "Run on Ray: 'local' (private Ray here), 'auto' (this machine's cluster) "
                                        "or an address."}
    )
    ray_actors: int | None = field(default=None, metadata={"help": "Teachers in the Ray actor pool (default: one "
                                                                    "per GPU)."})
    ray_cpus: int = field(default=2, metadata={"help": "CPUs of a Ray started here (--ray local)."})
    ray_gpus_per_actor: float | None = field(
        default=None, metadata={"help": "GPUs per Ray actor (default: 1 for vlm: teachers when there are GPUs)."}
    )

    def __post_init__(self) -> None:
        for name in ("shard_size", "ray_cpus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("batch_size", "ray_actors"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1 (or unset for the default)")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit={self.limit} must be >= 0")
        if self.ray_gpus_per_actor is not None and self.ray_gpus_per_actor < 0:
            raise ValueError(f"ray_gpus_per_actor={self.ray_gpus_per_actor} must be >= 0")
        if self.format not in ("jsonl", "parquet"):
            raise ValueError(f"format={self.format!r}: use 'jsonl' or 'parquet'")


def label_config(config: LabelConfig | None, overrides: dict[str, Any]) -> LabelConfig:
    """``config`` (default `LabelConfig()`) with ``overrides`` of its fields; unknown names are refused."""
    config = config or LabelConfig()
    if not overrides:
        return config
    names = {f.name for f in fields(LabelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown labeling options {unknown}; LabelConfig has {sorted(names)}")
    return replace(config, **overrides)


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LabelReport:
    """What one labeling run did. ``counts`` and ``call_counts`` cover the judgements written by this run."""

    teacher: str
    prompt_version: str
    out_dir: Path
    samples: int = 0  # in the dataset (after the split filter)
    selected: int = 0  # after ``limit``
    already_labelled: int = 0  # skipped: found in existing shards
    labelled: int = 0  # written by this run
    counts: Counter = field(default_factory=Counter)
    call_counts: dict[str, Counter] = field(default_factory=dict)  # "sc"/"pq" → status counts (VLM teachers)
    shards: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    unreadable_existing: int = 0  # bad records found in existing shards (their samples are labelled again)
    existing_errors: list[str] = field(default_factory=list)  # where and why, "file:line: reason" (first 50)
    bad_sample_records: int = 0  # lines of samples.jsonl that were skipped (not labelled)
    sample_errors: list[str] = field(default_factory=list)  # "file:line: reason" (first 50)
    max_subscore: float | None = None  # highest sub-score of this run's ok labels (a 0–10 answerer stays <= 10)

    @property
    def edits_per_s(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0

    @property
    def parse_failure_rate(self) -> float:
        return self.counts["parse_error"] / self.labelled if self.labelled else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher, "prompt_version": self.prompt_version, "out_dir": str(self.out_dir),
            "samples": self.samples, "selected": self.selected, "already_labelled": self.already_labelled,
            "labelled": self.labelled, "counts": {s: self.counts[s] for s in STATUSES},
            "call_counts": {c: {s: n[s] for s in STATUSES} for c, n in self.call_counts.items()},
            "shards": [str(p) for p in self.shards], "seconds": round(self.seconds, 3),
            "edits_per_s": round(self.edits_per_s, 3), "unreadable_existing": self.unreadable_existing,
            "existing_errors": self.existing_errors, "bad_sample_records": self.bad_sample_records,
            "sample_errors": self.sample_errors, "max_subscore": self.max_subscore, "problems": self.problems(),
        }

    def table(self):
        """The counts as a rich table: one row per judgement / call type, one column per status."""
        from rich.table import Table

        table = Table(title=f"labels by {self.teacher} ({self.prompt_version}) → {self.out_dir}")
        table.add_column("")
        for s in STATUSES:
            table.add_column(s, justify="right")
        table.add_column("total", justify="right")
        rows = [("judgement", self.counts)] + [(f"{c} call", n) for c, n in sorted(self.call_counts.items())]
        for label, counts in rows:
            table.add_row(label, *(str(counts[s]) for s in STATUSES), str(sum(counts[s] for s in STATUSES)))
        table.caption = (
            f"{self.labelled} labelled in {self.seconds:.1f} s ({self.edits_per_s:.2f} edits/s); "
            f"{self.already_labelled} already labelled; {self.selected} selected of {self.samples}; "
            f"{len(self.shards)} shard(s) written"
        )
        return table

    def problems(self) -> list[str]:
        """What a user should look at: skipped records and shards (first 5 of each), a suspicious score scale."""
        lines = []
        for what, count, errors in (("sample record", self.bad_sample_records, self.sample_errors),
                                    ("existing label record / shard", self.unreadable_existing, self.existing_errors)):
            if count:
                lines.append(f"{count} bad {what}(s) skipped:")
                lines.extend(f"  {e}" for e in errors[:5])
                if count > 5:
                    lines.append(f"  ... and {count - 5} more (see the JSON report)")
        ok = self.counts["ok"]
        if self.call_counts and ok >= SCALE_CHECK_MIN_OK and self.max_subscore is not None \
                and self.max_subscore <= 10:
            lines.append(
                f"no sub-score above {self.max_subscore:g} in {ok} ok labels: is the teacher answering on a 0–10 "
                "scale? If so, set \"score_range\": 10 in the prompt file so answers are converted"
            )
        return lines


# ---------------------------------------------------------------------------------------------------------------
# One run: lock, plan, write, count
# ---------------------------------------------------------------------------------------------------------------


class LabelLock:
    """Exclusive right to write one label folder; stale locks of dead local processes are taken over."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.owner = f"{os.getpid()}@{socket.gethostname()}"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text(encoding="utf-8", errors="replace").strip()
                if _is_stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise DatasetError(
                    f"{self.path.parent}: another labeling run ({holder}) is writing here; wait for it to finish, "
                    f"or delete {self.path} if that run is gone"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.owner)
            return
        raise DatasetError(f"{self.path}: could not take the lock (another run keeps replacing it)")

    def release(self) -> None:
        try:
            if self.path.read_text(encoding="utf-8").strip() == self.owner:
                self.path.unlink()
        except FileNotFoundError:
            pass


def _is_stale(holder: str) -> bool:
    """A lock is stale when it names a process on this host that no longer exists."""
    pid_text, _, host = holder.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's run (shared disk): we cannot tell, so we do not steal it
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LabelRun:
    """A labeling run as a context manager; the plain and the Ray pipeline both feed it judgements.

    On enter: take the lock, read samples and existing shards, plan ``todo``. ``record(judgements)`` buffers,
    writes full shards, counts and updates progress. On exit (also after an error or Ctrl-C): write what is
    buffered, release the lock, finish ``report``.
    """

    def __init__(
        self, data_dir: str | Path, teacher_name: str, prompt_version: str, config: LabelConfig | None = None, *,
        identity: str | None = None,
    ):
        config = config or LabelConfig()
        self.root = Path(data_dir)
        self.out_dir = labels_dir(self.root, teacher_name)
        self.shard_size, self.limit, self.fmt, self.split = config.shard_size, config.limit, config.format, config.split
        self.redo_failed, self.strict, self.show_progress = config.redo_failed, config.strict, config.progress
        self.identity = identity or teacher_name
        self.report = LabelReport(teacher=teacher_name, prompt_version=prompt_version, out_dir=self.out_dir)
        self.todo: list[EditSample] = []
        self._lock = LabelLock(self.out_dir)
        self._buffer: list[Judgement] = []
        self._pending_ids: set[str] = set()
        self._crashes_in_a_row = 0
        self._progress = None
        self._started = 0.0

    def __enter__(self) -> LabelRun:
        # Before the lock: a bad folder leaves no lock behind.
        sample_report = ReadReport()
        samples = read_samples(self.root, split=self.split, strict=self.strict, report=sample_report)
        self.report.bad_sample_records = sample_report.bad
        self.report.sample_errors = [str(e) for e in sample_report.errors[:50]]
        self._lock.acquire()
        try:
            self._plan(samples)
        except BaseException:
            self._lock.release()
            raise
        self._started = time.perf_counter()
        if self.show_progress and self.todo:
            self._start_progress()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._write(len(self._buffer))
        finally:
            self._lock.release()
            self.report.seconds = time.perf_counter() - self._started
            if self._progress is not None:
                self._progress.stop()

    def _plan(self, samples: list[EditSample]) -> None:
        existing_report = ReadReport()
        latest = {
            j.sample_id: j for j in read_label_shards(self.out_dir, strict=self.strict, report=existing_report)
        }
        self._check_owner(latest)
        done = {sid for sid, j in latest.items() if not (self.redo_failed and j.status == "failed")}
        ordered = [s for group in group_samples(samples).values() for s in group]
        if self.limit is not None:
            ordered = ordered[: self.limit]
        self.todo = [s for s in ordered if s.sample_id not in done]
        self._pending_ids = {s.sample_id for s in self.todo}
        self.report.samples = len(samples)
        self.report.selected = len(ordered)
        self.report.already_labelled = len(ordered) - len(self.todo)
        self.report.unreadable_existing = existing_report.bad
        self.report.existing_errors = [str(e) for e in existing_report.errors[:50]]

    def _check_owner(self, latest: dict[str, Judgement]) -> None:
        """Refuse to add labels of another teacher or prompt version to this folder; claim it when new."""
        me = {"teacher": self.report.teacher, "identity": self.identity,
              "prompt_version": self.report.prompt_version}
        fix = (f"label into another folder (--teacher-name NEW_NAME), or move {self.out_dir} away to start over")
        manifest = self.out_dir / MANIFEST_NAME
        if manifest.exists():
            try:
                owner = json.loads(manifest.read_bytes())
                if not isinstance(owner, dict):
                    raise ValueError(f"expected a JSON object, got {type(owner).__name__}")
            except ValueError as exc:
                raise DatasetError(f"{manifest}: unreadable ({exc}); it says who wrote these labels. {fix}") from exc
            differences = [f"{key} {owner.get(key)!r} there, {value!r} in this run"
                           for key, value in me.items() if owner.get(key) != value]
            if differences:
                raise DatasetError(
                    f"{self.out_dir} holds labels of another teacher setup ({'; '.join(differences)}); resuming "
                    f"would mix them. {fix}"
                )
        versions = sorted({j.prompt_version for j in latest.values()} - {me["prompt_version"]})
        teachers = sorted({j.teacher for j in latest.values()} - {me["teacher"]})
        if versions or teachers:
            found = [f"prompt versions {versions}"] if versions else []
            found += [f"teachers {teachers}"] if teachers else []
            raise DatasetError(
                f"{self.out_dir} holds records of {' and '.join(found)}; this run is {me['teacher']!r} with prompt "
                f"{me['prompt_version']!r}, and resuming would mix them. {fix}"
            )
        if not manifest.exists():
            atomic_write_bytes(manifest, (json.dumps(me, indent=2) + "\n").encode("utf-8"))

    def record(self, judgements: Iterable[Judgement]) -> None:
        """Take the judgements of one batch: check, buffer, write full shards, count."""
        judgements = list(judgements)
        for j in judgements:
            if j.sample_id not in self._pending_ids:
                raise RuntimeError(
                    f"teacher {self.report.teacher!r} returned sample {j.sample_id!r}, which was not asked for "
                    "or was already answered in this run (a teacher bug; nothing of it was written)"
                )
            self._pending_ids.discard(j.sample_id)
        self._buffer.extend(judgements)
        while len(self._buffer) >= self.shard_size:
            self._write(self.shard_size)
        self._count(judgements)
        crashed = bool(judgements) and all((j.error or "").startswith(CRASH_PREFIX) for j in judgements)
        self._crashes_in_a_row = self._crashes_in_a_row + 1 if crashed else 0
        if self._crashes_in_a_row >= MAX_CONSECUTIVE_CRASHES:
            raise RuntimeError(
                f"the teacher crashed on {MAX_CONSECUTIVE_CRASHES} batches in a row; last: {judgements[0].error}. "
                "Records so far are saved; fix the cause and rerun with --redo-failed"
            )

    def _write(self, n: int) -> None:
        if n <= 0:
            return
        path = write_label_shard(next_shard_path(self.out_dir, self.fmt), self._buffer[:n])
        del self._buffer[:n]
        self.report.shards.append(path)

    def _count(self, judgements: list[Judgement]) -> None:
        report = self.report
        for j in judgements:
            report.counts[j.status] += 1
            if j.ok and j.subscores:
                report.max_subscore = max(report.max_subscore or 0.0, *j.subscores)
            extra = j.model_extra or {}
            for call in ("sc", "pq"):
                status = extra.get(f"{call}_status")
                if status is not None:
                    report.call_counts.setdefault(call, Counter())[status] += 1
        report.labelled += len(judgements)
        if self._progress is not None:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            stats = f"{report.labelled / elapsed:.2f} edits/s · parse-fail {report.parse_failure_rate:.1%}"
            self._progress.update(self._task, advance=len(judgements), stats=stats)

    def _start_progress(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]label[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
        )
        self._task = self._progress.add_task(self.report.teacher, total=len(self.todo), stats="")
        self._progress.start()


# ---------------------------------------------------------------------------------------------------------------
# The plain (single-process) pipeline
# ---------------------------------------------------------------------------------------------------------------


def judge_safely(teacher: Teacher, samples: Sequence[EditSample], root: str | Path) -> list[Judgement]:
    """``teacher.judge_batch``, with a crash turned into ``failed`` judgements that say so."""
    try:
        judgements = teacher.judge_batch(samples, root)
    except Exception as exc:  # noqa: BLE001 — a crash fails this batch visibly; LabelRun stops repeated crashes
        error = f"{CRASH_PREFIX}{type(exc).__name__}: {exc}"
        return [
            Judgement.failure(s.sample_id, teacher.name, "failed", error, prompt_version=teacher.prompt_version)
            for s in samples
        ]
    if [j.sample_id for j in judgements] != [s.sample_id for s in samples]:
        raise RuntimeError(
            f"teacher {teacher.name!r} returned {len(judgements)} judgements for {len(samples)} samples, or out "
            "of order; judge_batch must return one per sample, in order"
        )
    return judgements


def label_dataset(
    data_dir: str | Path, teacher: Teacher, config: LabelConfig | None = None, **overrides: Any
) -> LabelReport:
    """Label every sample of ``data_dir`` not yet labelled by ``teacher``; shards go to ``labels/<teacher>/``.

    Arguments:
        data_dir: dataset folder (``samples.jsonl`` + images).
        teacher: any `Teacher` (`make_teacher` builds one from a spec).
        config: how the run goes (`LabelConfig`; its ``ray*`` fields are for `label_dataset_ray`).
        overrides: `LabelConfig` fields, e.g. ``label_dataset(root, teacher, shard_size=64, progress=False)``.
    """
    config = label_config(config, overrides)
    batch_size = config.batch_size or getattr(teacher, "batch_size", None) or 16
    run = LabelRun(data_dir, teacher.name, teacher.prompt_version, config, identity=teacher_identity(teacher))
    with run:
        for start in range(0, len(run.todo), batch_size):
            run.record(judge_safely(teacher, run.todo[start : start + batch_size], run.root))
    return run.report
