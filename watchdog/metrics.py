"""Prometheus collectors, created against an injected registry.

The first three carry the OpenFaaS watchdog's names, labels and buckets, so its
dashboards and alerts work unchanged; the `watchdog_*` ones are ours.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OPENFAAS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Function run times go further: OSCAR services run for minutes.
FUNCTION_BUCKETS = (*OPENFAAS_BUCKETS, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """`inflight` is read at scrape time; with several workers (prometheus-client's
    multiprocess mode, where a function cannot be read across processes) each
    worker calls `set_inflight` with its own count and the scrape adds them up."""

    def __init__(self, registry: CollectorRegistry, *, max_inflight: int,
                 inflight: Callable[[], float] | None) -> None:
        self.requests = Counter(
            "http_requests_total", "Function requests answered, by status code and method.",
            ["code", "method"], registry=registry)
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "Time from request to response of function requests.",
            ["code", "method"], buckets=OPENFAAS_BUCKETS, registry=registry)
        self.inflight = Gauge(
            "http_requests_in_flight",
            "Functions running now (slots of max_inflight in use).", registry=registry,
            multiprocess_mode="livesum")
        if inflight is not None:
            self.inflight.set_function(inflight)
        self.max_inflight = Gauge(
            "watchdog_max_inflight", "The concurrency limit (0: none).", registry=registry,
            multiprocess_mode="livemax")
        self.max_inflight.set(max_inflight)
        self.rejected = Counter(
            "watchdog_rejected_requests_total",
            "Requests answered 429 because max_inflight functions were running.",
            registry=registry)
        self.function_duration = Histogram(
            "watchdog_function_duration_seconds",
            "Run time of the function process, by exit status (a code or a signal name).",
            ["exit_status"], buckets=FUNCTION_BUCKETS, registry=registry)
        # Label lookups cost a lock and a dict: keep the children we have made.
        self._request_children: dict[tuple[int, str], tuple[Counter, Histogram]] = {}
        self._function_children: dict[str, Histogram] = {}

    def set_inflight(self, count: int) -> None:
        self.inflight.set(count)

    def observe_request(self, code: int, method: str, seconds: float) -> None:
        key = (code, method)
        children = self._request_children.get(key)
        if children is None:
            labels = (str(code), method.lower())
            children = (self.requests.labels(*labels), self.request_duration.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_function(self, exit_status: str, seconds: float) -> None:
        child = self._function_children.get(exit_status)
        if child is None:
            child = self._function_children[exit_status] = self.function_duration.labels(
                exit_status)
        child.observe(seconds)
