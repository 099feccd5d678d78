"""The model worker: one thread that owns the `RewardModel` and scores requests in dynamic batches.

Requests (lists of checked `Edit`s) wait in a bounded queue, counted in edits. The worker takes the oldest request,
then keeps adding requests in arrival order until the batch holds ``max_batch`` edits or ``max_wait_ms`` has passed
since that first request arrived, whichever comes first, and makes one `RewardModel.score` call for the lot. Inside a
batch equal sources (by content hash) are handed over as one object, so the runtime runs the backbone once per
distinct source, and the instruction encoder sees each distinct instruction once: a GRPO group's source and
instruction are encoded once even when its candidates arrive in separate requests. Results go back to each request
in its own order.

A request whose client went away (its future was cancelled) or whose deadline passed is dropped before it reaches
the model. If a model call raises, the batch is retried one request at a time, so one bad request cannot sink the
others, and what still fails gets an ``internal`` error per edit. The worker never dies on bad input.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spatialreward.serving.items import DEADLINE, INTERNAL, Edit, ItemError

log = logging.getLogger("spatialreward.serving")


class QueueFull(RuntimeError):
    """The queue cannot take the request now; ``retry_after_s`` is a fair guess of when it can."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class ItemResult:
    """The answer for one edit. ``ok=False`` carries ``error`` / ``error_kind`` and no scores (reward NaN)."""

    ok: bool
    reward: float = float("nan")
    subscores: list[float] = field(default_factory=list)  # 4 values, 0–25, order of SUBSCORE_NAMES
    uncertainty: list[float] = field(default_factory=list)  # one std per sub-score, points
    presence: float = float("nan")
    novelty: float | None = None  # > 1: unlike the training edits (None: the model has no novelty fit)
    boxes: list[list[float]] = field(default_factory=list)  # (x1, y1, x2, y2) in 0–1000 on the edited image
    mask: np.ndarray | None = None  # [S, S] bool at the model's input side, when asked for
    error: str | None = None
    error_kind: str | None = None

    @classmethod
    def failed(cls, err: ItemError) -> ItemResult:
        return cls(ok=False, error=str(err), error_kind=err.kind)

    def mask_png(self) -> bytes | None:
        if self.mask is None:
            return None
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=False)
        return buf.getvalue()


@dataclass
class _Job:
    edits: list[Edit]
    future: Future
    deadline: float  # time.monotonic()
    arrived: float
    want_mask: bool = False

    @property
    def size(self) -> int:
        return sum(e.error is None for e in self.edits)


class ModelWorker:
    """Owns the model; `submit` hands it a request and returns a `concurrent.futures.Future` of its results."""

    def __init__(self, model, *, max_batch: int = 256, max_wait_ms: float = 5.0, max_queue: int = 4096,
                 metrics=None):
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._queued_edits = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._edits_per_s = 100.0  # running estimate, for Retry-After
        self.batches = 0  # model calls made (tests read it)
        self.last_batch_sources = 0  # distinct sources in the last model call

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> ModelWorker:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="spatialreward-model-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:  # whatever is still queued will never be scored: say so
            while self._jobs:
                job = self._jobs.popleft()
                self._finish(job, error=ItemError(INTERNAL, "the server is shutting down; retry on another replica"))
            self._queued_edits = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return self._queued_edits

    # -- submitting ------------------------------------------------------------------------------------------------

    def submit(self, edits: list[Edit], *, timeout_s: float, want_mask: bool = False) -> Future:
        """Queue a request; raises `QueueFull` when its edits do not fit. Items that already carry an error are
        answered as such without reaching the model."""
        now = time.monotonic()
        job = _Job(edits, Future(), deadline=now + timeout_s, arrived=now, want_mask=want_mask)
        n = job.size
        if n == 0:
            self._finish(job)
            return job.future
        with self._cond:
            if self._stop or self._thread is None:
                raise RuntimeError("the model worker is not running")
            if self._queued_edits + n > self.max_queue:
                wait = max(1.0, (self._queued_edits + n - self.max_queue) / max(self._edits_per_s, 1.0))
                raise QueueFull(f"queue full: {self._queued_edits} edits waiting, limit {self.max_queue}; "
                                f"retry in {wait:.0f} s", retry_after_s=wait)
            self._jobs.append(job)
            self._queued_edits += n
            if self.metrics:
                self.metrics.queue_depth.set(self._queued_edits)
            self._cond.notify()
        return job.future

    # -- the worker loop -------------------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Job]:
        with self._cond:
            while not self._jobs and not self._stop:
                self._cond.wait()
            if self._stop:
                return []
            first = self._jobs[0]
            close_at = first.arrived + self.max_wait_s
            while not self._stop:  # fill up to max_batch or until max_wait after the first arrival
                total = 0
                for job in self._jobs:
                    total += job.size
                    if total >= self.max_batch:
                        break
                remaining = close_at - time.monotonic()
                if total >= self.max_batch or remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, total = [], 0
            while self._jobs and (not batch or total + self._jobs[0].size <= self.max_batch):
                job = self._jobs.popleft()
                batch.append(job)
                total += job.size
            self._queued_edits -= total
            if self.metrics:
                self.metrics.queue_depth.set(self._queued_edits)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            live = []
            now = time.monotonic()
            for job in batch:
                if not job.future.set_running_or_notify_cancel():  # the client went away: skip the work
                    if self.metrics:
                        self.metrics.cancelled.inc()
                    continue
                if now > job.deadline:
                    self._finish(job, error=ItemError(DEADLINE, "the request's deadline passed while it was queued"))
                    continue
                live.append(job)
            if live:
                self._score_jobs(live)

    def _score_jobs(self, jobs: list[_Job]) -> None:
        try:
            results = self._score([e for job in jobs for e in job.edits if e.error is None],
                                  want_mask=any(j.want_mask for j in jobs))
        except Exception as exc:  # noqa: BLE001 - isolate the request that breaks the model call
            if len(jobs) > 1:
                log.warning("model call over %d requests failed (%s); retrying one request at a time", len(jobs), exc)
                for job in jobs:
                    self._score_jobs([job])
                return
            log.exception("model call failed")
            self._finish(jobs[0], error=ItemError(INTERNAL, f"model call failed: {type(exc).__name__}: {exc}"))
            return
        start = 0
        for job in jobs:
            n = job.size
            self._finish(job, scored=results[start:start + n])
            start += n

    def _score(self, edits: list[Edit], *, want_mask: bool) -> list[ItemResult]:
        shared: dict[str, Any] = {}  # source content hash -> the one object every edit of that source gets
        sources = [shared.setdefault(e.source_key or str(id(e.source)), e.source) for e in edits]
        t0 = time.perf_counter()
        out = self.model.score(sources, [e.edited for e in edits], [e.instruction for e in edits],
                               batch_size=max(len(edits), 1), on_error="flag")
        elapsed = time.perf_counter() - t0
        self.batches += 1
        self.last_batch_sources = len(shared)
        self._edits_per_s = 0.8 * self._edits_per_s + 0.2 * (len(edits) / max(elapsed, 1e-6))
        if self.metrics:
            self.metrics.batch_size.observe(len(edits))
            self.metrics.model_seconds.observe(elapsed)
            if out.novelty is not None:
                for value in out.novelty[out.ok].tolist():
                    self.metrics.novelty.observe(value)
        reward = out.reward.tolist()
        subscores = out.subscores.tolist()
        uncertainty = out.uncertainty.tolist()
        presence = out.presence.tolist()
        novelty = out.novelty.tolist() if out.novelty is not None else [None] * len(edits)
        masks = out.edit_mask.numpy() if want_mask else None
        results = []
        for i in range(len(edits)):
            if not bool(out.ok[i]):
                results.append(ItemResult.failed(ItemError("bad_image", out.errors[i] or "unreadable input")))
                continue
            results.append(ItemResult(
                ok=True, reward=reward[i], subscores=subscores[i], uncertainty=uncertainty[i], presence=presence[i],
                novelty=novelty[i], boxes=[[float(v) for v in b] for b in out.boxes[i].tolist()],
                mask=masks[i] if masks is not None else None,
            ))
        return results

    def _finish(self, job: _Job, *, scored: list[ItemResult] | None = None, error: ItemError | None = None) -> None:
        """Put each edit's answer at its place in the request and resolve the future (once)."""
        scored_iter = iter(scored or [])
        answers = []
        for e in job.edits:
            if e.error is not None:
                answers.append(ItemResult.failed(e.error))
            elif error is not None:
                answers.append(ItemResult.failed(error))
            else:
                answers.append(next(scored_iter))
        if not job.want_mask:
            for a in answers:
                a.mask = None
        if self.metrics:
            for a in answers:
                if a.ok:
                    self.metrics.edits.labels(status="ok").inc()
                else:
                    self.metrics.edits.labels(status="error").inc()
                    self.metrics.errors.labels(kind=a.error_kind or INTERNAL).inc()
        if job.future.done():
            return
        if job.future.running() or job.future.set_running_or_notify_cancel():
            job.future.set_result(answers)
