"""Prometheus metrics of one server (its own registry, so two apps in one process — tests — do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NOVELTY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)  # 1.0: the 99th percentile of in-distribution edits
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class Metrics:
    """Requests by route and status, edits by outcome, errors by kind, batch sizes, queue depth, latencies, and
    the novelty of scored edits."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("spatialreward_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.edits = Counter("spatialreward_edits", "edits answered, by outcome", ["status"], registry=r)
        self.errors = Counter("spatialreward_errors", "failed edits and rejected requests, by kind", ["kind"],
                              registry=r)
        self.batch_size = Histogram("spatialreward_batch_size", "edits per model call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("spatialreward_queue_depth", "edits waiting for the model", registry=r)
        self.latency = Histogram("spatialreward_request_seconds", "request latency, arrival to answer", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("spatialreward_model_seconds", "time in one model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        # The policy drifting off what the student learned from: watch the share of edits above 1 per step.
        self.novelty = Histogram("spatialreward_novelty", "novelty of scored edits (students with a novelty fit)",
                                 buckets=NOVELTY_BUCKETS, registry=r)
        self.cancelled = Counter("spatialreward_cancelled_requests",
                                 "requests dropped before scoring because the client went away", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
