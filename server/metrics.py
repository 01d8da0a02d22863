"""Prometheus metrics, in a registry of the app's own (two apps in one process never share counters).

Names (all prefixed ``guardrails_``): ``requests_total`` {endpoint, status, tenant}, ``request_seconds`` {endpoint},
``decisions_total`` {stage, scanner, decision}, ``categories_total`` {stage, scanner, category},
``scanner_seconds`` {stage, scanner}, ``stage_seconds`` {stage}, ``in_flight`` {endpoint}, streaming work
(``stream_output_chars_total``, ``stream_output_chunks_total``, ``stream_guard_chars_total``: characters the output
scanners processed, so guard work per output character is their ratio), model runners (``model_batches_total``,
``model_sequences_total``, ``model_tokens_total`` {kind: real|padded}, ``model_batch_size`` and
``model_queue_depth`` {runner}) and the audit spool (``audit_pending``, ``audit_written_total``,
``audit_failures_total``, ``audit_dropped_total`` {sink}, ``audit_healthy`` {sink}). No label ever holds content.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from guardrails import Decision, Pipeline, Result

__all__ = ["Metrics", "find_runners"]

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def find_runners(root: Any, *, depth: int = 6) -> dict[str, Any]:
    """The model batch runners reachable from the pipeline (by a bounded walk of its attributes), by name."""
    try:
        from guardrails.models.runtime import BatchRunner
    except ImportError:  # pragma: no cover - the models extra is not installed
        return {}
    found: dict[str, Any] = {}
    seen: set[int] = set()
    frontier = [root]
    for _ in range(depth):
        following = []
        for obj in frontier:
            if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
                continue
            seen.add(id(obj))
            if isinstance(obj, BatchRunner):
                name = obj._thread.name.removeprefix("guardrails-") if hasattr(obj, "_thread") else "model"
                found[f"{name}-{len(found)}" if name in found else name] = obj
                continue
            if isinstance(obj, dict):
                following.extend(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                following.extend(obj)
            elif type(obj).__module__.startswith("guardrails"):
                following.extend(getattr(obj, "__dict__", {}).values())
                following.extend(getattr(obj, s, None) for s in getattr(type(obj), "__slots__", ()))
        frontier = following
    return found


class _Live(Collector):
    """Values read at scrape time: the audit spool and the model runners."""

    def __init__(self, pipeline: Pipeline, runners: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.runners = runners

    def collect(self) -> Iterable[Any]:
        pending = GaugeMetricFamily("guardrails_audit_pending", "Audit records not yet written", labels=["sink"])
        healthy = GaugeMetricFamily("guardrails_audit_healthy", "1 when the sink is writing", labels=["sink"])
        written = CounterMetricFamily("guardrails_audit_written", "Audit records written", labels=["sink"])
        failures = CounterMetricFamily("guardrails_audit_failures", "Failed audit write attempts", labels=["sink"])
        dropped = CounterMetricFamily("guardrails_audit_dropped", "Audit records dropped (spool full)", labels=["sink"])
        writer = self.pipeline.audit
        for status in writer.status() if writer is not None else []:
            pending.add_metric([status.name], status.pending)
            healthy.add_metric([status.name], 1.0 if status.healthy else 0.0)
            written.add_metric([status.name], status.written)
            failures.add_metric([status.name], status.failures)
            dropped.add_metric([status.name], status.dropped)
        yield from (pending, healthy, written, failures, dropped)
        batches = CounterMetricFamily("guardrails_model_batches", "Forward passes", labels=["runner"])
        sequences = CounterMetricFamily("guardrails_model_sequences", "Sequences in forward passes", labels=["runner"])
        tokens = CounterMetricFamily("guardrails_model_tokens", "Tokens in forward passes", labels=["runner", "kind"])
        size = GaugeMetricFamily("guardrails_model_batch_size", "Mean sequences per forward pass", labels=["runner"])
        depth = GaugeMetricFamily("guardrails_model_queue_depth", "Sequences waiting for a pass", labels=["runner"])
        for name, runner in self.runners.items():
            stats = runner.stats
            batches.add_metric([name], stats.batches)
            sequences.add_metric([name], stats.sequences)
            tokens.add_metric([name, "real"], stats.real_tokens)
            tokens.add_metric([name, "padded"], stats.padded_tokens)
            size.add_metric([name], stats.mean_batch)
            depth.add_metric([name], runner.queue_depth)
        yield from (batches, sequences, tokens, size, depth)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "guardrails_requests", "Requests answered", ["endpoint", "status", "tenant"], registry=r
        )
        self.latency = Histogram(
            "guardrails_request_seconds", "Request latency", ["endpoint"], buckets=_LATENCY, registry=r
        )
        self.in_flight = Gauge("guardrails_in_flight", "Requests being served", ["endpoint"], registry=r)
        self.decisions = Counter(
            "guardrails_decisions", "Scanner decisions", ["stage", "scanner", "decision"], registry=r
        )
        self.categories = Counter(
            "guardrails_categories",
            "Categories reported by scanners that fired",
            ["stage", "scanner", "category"],
            registry=r,
        )
        self.scanner_latency = Histogram(
            "guardrails_scanner_seconds", "Scanner latency", ["stage", "scanner"], buckets=_LATENCY, registry=r
        )
        self.stage_latency = Histogram(
            "guardrails_stage_seconds", "Stage latency (its slowest scanner)", ["stage"], buckets=_LATENCY, registry=r
        )
        self.stream_output = Counter(
            "guardrails_stream_output_chars", "Characters received from the upstream in streams", registry=r
        )
        self.stream_chunks = Counter(
            "guardrails_stream_output_chunks",
            "Chunks (about one token each) received from the upstream in streams",
            registry=r,
        )
        self.stream_guard = Counter(
            "guardrails_stream_guard_chars", "Characters the output scanners processed in streams", registry=r
        )
        self._live: _Live | None = None
        self._children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._in_flight: dict[str, Any] = {}

    def watch(self, pipeline: Pipeline) -> None:
        """Read the audit spool and the model runners of ``pipeline`` at every scrape."""
        if self._live is None:
            self._live = _Live(pipeline, find_runners(pipeline))
            self.registry.register(self._live)

    def request(self, endpoint: str, status: int, tenant: str, seconds: float) -> None:
        """Count one answered request (label children cached: this runs on every request)."""
        key = (endpoint, status, tenant)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, str(status), tenant),
                self.latency.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)

    def in_flight_for(self, endpoint: str) -> Any:
        """The in-flight gauge of ``endpoint`` (label child cached: this runs on every request)."""
        gauge = self._in_flight.get(endpoint)
        if gauge is None:
            gauge = self._in_flight[endpoint] = self.in_flight.labels(endpoint)
        return gauge

    def observe(self, result: Result | None) -> None:
        if result is None:
            return
        for verdict in result.verdicts:
            stage = verdict.stage.value
            slowest = 0.0
            for r in verdict.results:
                self.decisions.labels(stage, r.scanner_id, r.decision.value).inc()
                if r.decision is not Decision.ALLOW:
                    for category in r.categories:
                        self.categories.labels(stage, r.scanner_id, category).inc()
                if r.status.value != "skipped":
                    self.scanner_latency.labels(stage, r.scanner_id).observe(r.duration_ms / 1000)
                slowest = max(slowest, r.duration_ms)
            if verdict.results:
                self.stage_latency.labels(stage).observe(slowest / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
