"""The metrics exposition: Prometheus' text format as the Go watchdog writes it, on an
injected registry, and the sums across worker processes (real forks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog import metrics
from watchdog.metrics import Metrics, Registry, SharedRegistry, go_float

# strconv.FormatFloat(v, 'g', -1, 64), printed by Go 1.2x for each value.
GO_FORMATTED = [
    (0.0, "0"), (-0.0, "-0"), (1.0, "1"), (10.0, "10"), (600.0, "600"), (0.005, "0.005"),
    (2.5, "2.5"), (0.0001, "0.0001"), (1e-05, "1e-05"), (1.8294e-05, "1.8294e-05"),
    (0.001922375, "0.001922375"), (999999.0, "999999"), (1e6, "1e+06"),
    (1234567.0, "1.234567e+06"), (1.097728e7, "1.097728e+07"), (1e21, "1e+21"),
    (1.8446744073709552e19, "1.8446744073709552e+19"), (0.1 + 0.2, "0.30000000000000004"),
    (-3.5, "-3.5"), (5e-324, "5e-324"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"),
    (float("nan"), "NaN"),
]


@pytest.mark.parametrize(("value", "expected"), GO_FORMATTED)
def test_numbers_are_written_as_go_writes_them(value: float, expected: str) -> None:
    assert go_float(value) == expected


def observed(registry: Registry) -> Metrics:
    m = Metrics(registry, max_inflight=4, inflight=lambda: 2)
    m.observe_request(200, "POST", 0.003)
    m.observe_request(200, "POST", 1.0)  # on a bound: in its bucket (le is <=)
    m.observe_request(429, "GET", 0.0)
    m.rejected.inc()
    m.observe_function("0", 42.0)
    return m


def test_the_exposition_word_for_word() -> None:
    registry = Registry()
    observed(registry)
    text = registry.expose().decode()
    bucket = 'http_request_duration_seconds_bucket{code="200",method="post",le="%s"} %s'
    assert text.splitlines()[:2] == [
        "# HELP http_request_duration_seconds Seconds spent serving HTTP requests.",
        "# TYPE http_request_duration_seconds histogram",
    ]
    lines = text.splitlines()
    assert [line for line in lines if line.startswith(bucket.split("{")[0] + '{code="200"')] \
        == [bucket % (le, n) for le, n in [
            ("0.005", 1), ("0.01", 1), ("0.025", 1), ("0.05", 1), ("0.1", 1), ("0.25", 1),
            ("0.5", 1), ("1", 2), ("2.5", 2), ("5", 2), ("10", 2), ("+Inf", 2)]]
    assert 'http_request_duration_seconds_sum{code="200",method="post"} 1.003' in lines
    assert 'http_request_duration_seconds_count{code="200",method="post"} 2' in lines
    # Children by label values, families by name, the gauges read now.
    assert [line for line in lines if line.startswith("http_requests_total")] == [
        'http_requests_total{code="200",method="post"} 2',
        'http_requests_total{code="429",method="get"} 1']
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert families == ["http_request_duration_seconds", "http_requests_in_flight",
                        "http_requests_total", "watchdog_function_duration_seconds",
                        "watchdog_max_inflight", "watchdog_queue_depth",
                        "watchdog_queue_wait_seconds", "watchdog_rejected_requests_total"]
    assert "http_requests_in_flight 2" in lines
    assert "watchdog_max_inflight 4" in lines
    assert "watchdog_rejected_requests_total 1" in lines
    assert 'watchdog_function_duration_seconds_bucket{exit_status="0",le="30"} 0' in lines
    assert 'watchdog_function_duration_seconds_bucket{exit_status="0",le="60"} 1' in lines
    assert text.endswith("watchdog_rejected_requests_total 1\n")


def test_prometheus_own_parser_reads_the_same_numbers() -> None:
    registry = Registry()
    observed(registry)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(registry.expose().decode())
               for s in family.samples}
    assert samples[("http_requests_total", (("code", "200"), ("method", "post")))] == 2
    assert samples[("http_request_duration_seconds_bucket",
                    (("code", "200"), ("le", "1"), ("method", "post")))] == 2
    assert samples[("watchdog_function_duration_seconds_sum", (("exit_status", "0"),))] == 42
    assert registry.get_sample_value("http_requests_total",
                                     {"code": "429", "method": "get"}) == 1
    assert registry.get_sample_value("http_request_duration_seconds_bucket", {
        "code": "200", "method": "post", "le": "0.005"}) == 1
    assert registry.get_sample_value("http_requests_total", {"code": "500"}) is None


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    counter = metrics.Counter("x_total", 'a \\ and\na "quote"', ["what"], registry=registry)
    counter.labels('say "hi"\\\n').inc(2)
    lines = registry.expose().decode().splitlines()
    assert lines[0] == '# HELP x_total a \\\\ and\\na "quote"'
    assert lines[2] == 'x_total{what="say \\"hi\\"\\\\\\n"} 2'
    assert registry.get_sample_value("x_total", {"what": 'say "hi"\\\n'}) == 2
    with pytest.raises(ValueError, match="registered twice"):
        metrics.Counter("x_total", "again", registry=registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels("a", "b")


def fork(work: Path, *, requests: int, exit_status: str) -> None:
    """A worker: its own SharedRegistry in `work`, a few observations, then it exits."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            m = Metrics(SharedRegistry(str(work)), max_inflight=4, inflight=lambda: 3)
            for _ in range(requests):
                m.observe_request(200, "POST", 0.02)
            m.observe_function(exit_status, 0.5)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_workers_numbers_add_up_those_of_dead_ones_included(tmp_path: Path) -> None:
    fork(tmp_path, requests=3, exit_status="0")
    fork(tmp_path, requests=2, exit_status="SIGKILL")
    assert len(list(tmp_path.glob("*.cells"))) == 2
    registry = SharedRegistry(str(tmp_path))
    mine = Metrics(registry, max_inflight=4, inflight=lambda: 1)
    mine.observe_request(200, "POST", 2.0)
    mine.observe_request(404, "GET", 0.001)
    value = registry.get_sample_value
    assert value("http_requests_total", {"code": "200", "method": "post"}) == 6
    assert value("http_requests_total", {"code": "404", "method": "get"}) == 1
    assert value("http_request_duration_seconds_bucket",
                 {"code": "200", "method": "post", "le": "0.025"}) == 5
    assert value("http_request_duration_seconds_sum",
                 {"code": "200", "method": "post"}) == pytest.approx(2.1)
    assert value("watchdog_function_duration_seconds_count", {"exit_status": "0"}) == 1
    assert value("watchdog_function_duration_seconds_count", {"exit_status": "SIGKILL"}) == 1
    # Gauges are this worker's reading of what is shared, not sums of files.
    assert value("http_requests_in_flight") == 1
    assert value("watchdog_max_inflight") == 4
    # Later observations show at the next scrape: the files are memory, not copies.
    mine.observe_request(200, "POST", 0.1)
    assert value("http_requests_total", {"code": "200", "method": "post"}) == 7


def test_a_full_file_keeps_new_series_in_the_worker(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FILE_SIZE", 4096)
    registry = SharedRegistry(str(tmp_path))
    counter = metrics.Counter("many_total", "many", ["n"], registry=registry)
    for n in range(200):  # far more than a page of entries
        counter.labels(str(n)).inc(n)
    assert registry.get_sample_value("many_total", {"n": "0"}) == 0
    assert registry.get_sample_value("many_total", {"n": "199"}) == 199
    assert sum(registry.numbers()[f"many_total\0{n}"][0] for n in range(200)) == sum(range(200))
