"""The server's Prometheus metrics, in a registry of its own (served at GET /metrics)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lanmt_cli.serving.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests, sentences, batches, queue depth and latency of one server."""

    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lanmt_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.sentences = Counter("lanmt_sentences", "Sentences translated", ["decoder"], registry=r)
        self.disconnects = Counter(
            "lanmt_client_disconnects", "Requests whose client left before the answer", registry=r
        )
        self.latency = Histogram(
            "lanmt_request_seconds",
            "Time from a request's arrival to its answer",
            ["endpoint"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_sentences = Histogram(
            "lanmt_batch_sentences", "Sentences per decoded batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "lanmt_batch_requests", "Requests per decoded batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "lanmt_batch_tokens",
            "Source tokens per decoded batch",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "lanmt_batch_seconds", "Decoding time per batch", buckets=SECONDS_BUCKETS, registry=r
        )
        Gauge("lanmt_queue_sentences", "Sentences waiting for a batch", registry=r).set_function(
            queue_depth
        )
        Gauge(
            "lanmt_requests_in_flight", "Requests received and not yet answered", registry=r
        ).set_function(in_flight)

    def batch(self, stats: BatchStats) -> None:
        self.batch_sentences.observe(stats.sentences)
        self.batch_requests.observe(stats.requests)
        self.batch_tokens.observe(stats.tokens)
        self.batch_seconds.observe(stats.seconds)
        self.sentences.labels(decoder=stats.key.name).inc(stats.sentences)

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
