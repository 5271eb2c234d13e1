"""The gateway's metrics on an injected registry, in Prometheus' text format.

The first three are the OpenFaaS watchdog's and are exposed as the Go watchdog exposes
them: the same names, labels, HELP texts, buckets and number format (`le="1"`,
`le="0.005"`, a count `3`, `1e+06`), families sorted by name, children by label
values, a labelled family only once it has a child. The `watchdog_*` ones are ours.

prometheus-client is not used: importing it (with http.server, email, wsgiref) was a
fifth of the gateway's start, a scrape took 1.5 ms and a request's observation 2 µs
(14 µs and 5 ms in its multiprocess mode), and it writes `le="1.0"`.

With several workers (`SharedRegistry`), each keeps its counters and histograms in a
memory-mapped file of its own in a folder they share (an observation is a store into
that memory), and a scrape of any worker adds up every file there, those of workers
that died included, as counters must. Gauges are never kept there: each worker reads
them from what it shares already (the limiter) or from the configuration.
"""

from __future__ import annotations

import abc
import logging
import math
import mmap
import os
import struct
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# What the Go watchdog's metrics handler answers with (client_golang's text format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"

OPENFAAS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Function run times go further: OSCAR services run for minutes.
FUNCTION_BUCKETS = (*OPENFAAS_BUCKETS, 30.0, 60.0, 120.0, 300.0, 600.0)

# A child's place among the numbers: its family's name and label values, NUL-separated.
Key = str


class Cells(Protocol):
    """A child's numbers: a list, or float64s in a shared memory map (a memoryview)."""

    def __getitem__(self, index: int, /) -> float: ...
    def __setitem__(self, index: int, value: float, /) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[float]: ...


def go_float(value: float) -> str:
    """A number as Go's strconv.FormatFloat(value, 'g', -1, 64) writes it, which is
    what the Go watchdog's exposition uses for values and `le` labels: the shortest
    digits that read back the same, in exponent form when the exponent is below -4
    or from 6 on (`1`, `0.005`, `1.8294e-05`, `1.097728e+07`)."""
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    # repr's digits are the shortest that read back the same; only the layout differs.
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")  # value = digits x 10**scale
    scale = int(exponent or 0) - len(fraction)
    significant = digits.rstrip("0")
    scale += len(digits) - len(significant)
    power = len(significant) - 1 + scale  # value = d.ddd x 10**power
    sign = "-" if value < 0 else ""
    if power < -4 or power >= 6:
        rest = "." + significant[1:] if len(significant) > 1 else ""
        return f"{sign}{significant[0]}{rest}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if power < 0:
        return f"{sign}0.{'0' * (-power - 1)}{significant}"
    if scale >= 0:
        return f"{sign}{significant}{'0' * scale}"
    return f"{sign}{significant[:power + 1]}.{significant[power + 1:]}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Registry:
    """The families of one process and where their numbers live (plain lists)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._cells: dict[Key, Cells] = {}

    def register(self, family: _Family) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name!r} registered twice")
        self._families[family.name] = family

    def cells(self, key: Key, size: int) -> Cells:
        """`size` numbers for a new child, at 0."""
        cells = self._cells[key] = self._allocate(key, size)
        return cells

    def _allocate(self, key: Key, size: int) -> Cells:
        return [0.0] * size

    def numbers(self) -> dict[Key, list[float]]:
        """Every child's numbers, by key (with several workers: every worker's, added)."""
        return {key: list(cells) for key, cells in self._cells.items()}

    def expose(self) -> bytes:
        numbers = self.numbers()
        by_family: dict[str, list[tuple[tuple[str, ...], list[float]]]] = {}
        for key, values in numbers.items():
            name, *labels = key.split("\0")
            by_family.setdefault(name, []).append((tuple(labels), values))
        lines: list[str] = []
        for name in sorted(self._families):
            self._families[name].expose(sorted(by_family.get(name, [])), lines)
        lines.append("")
        return "\n".join(lines).encode()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None
                         ) -> float | None:
        """A sample's value as the exposition shows it (for tests): `name` with its
        suffix (`_bucket`, `_sum`, `_count`), `labels` with `le` for a bucket."""
        wanted = labels or {}
        for line in self.expose().decode().splitlines():
            if line.startswith("#") or not line:
                continue
            sample, _, value = line.rpartition(" ")
            sample_name, _, rest = sample.partition("{")
            if sample_name != name:
                continue
            found = dict(_parse_labels(rest.rstrip("}"))) if rest else {}
            if found == wanted:
                return float(value)
        return None


def _parse_labels(text: str) -> Iterable[tuple[str, str]]:
    while text:
        name, _, text = text.partition('="')
        value = []
        i = 0
        while text[i] != '"':
            if text[i] == "\\":
                i += 1
                value.append({"n": "\n"}.get(text[i], text[i]))
            else:
                value.append(text[i])
            i += 1
        yield name, "".join(value)
        text = text[i + 1:].lstrip(",")


class _Family(abc.ABC):
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: Registry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._registry = registry
        registry.register(self)

    def _cells(self, labelvalues: Sequence[str], size: int) -> Cells:
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, given {labelvalues}")
        return self._registry.cells("\0".join((self.name, *labelvalues)), size)

    def _head(self, lines: list[str]) -> None:
        lines.append(f"# HELP {self.name} {_escape_help(self.documentation)}")
        lines.append(f"# TYPE {self.name} {self.kind}")

    def _labels(self, values: Sequence[str], extra: str = "") -> str:
        pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(self.labelnames, values,
                                                             strict=True)]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    @abc.abstractmethod
    def expose(self, children: list[tuple[tuple[str, ...], list[float]]],
               lines: list[str]) -> None:
        """Append the family's text lines for these children (label values, cells)."""


class Counter(_Family):
    """`inc()` unlabelled, or `labels(...).inc()`."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: Registry) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        if not self.labelnames:
            self._only = self.labels()

    def labels(self, *labelvalues: str) -> CounterChild:
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = CounterChild(self._cells(labelvalues, 1))
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._only.inc(amount)

    def expose(self, children: list[tuple[tuple[str, ...], list[float]]],
               lines: list[str]) -> None:
        if not children:
            return
        self._head(lines)
        for labels, (value,) in children:
            lines.append(f"{self.name}{self._labels(labels)} {go_float(value)}")


class CounterChild:
    __slots__ = ("_cells",)

    def __init__(self, cells: Cells) -> None:
        self._cells = cells

    def inc(self, amount: float = 1.0) -> None:
        self._cells[0] += amount


class Histogram(_Family):
    """`labels(...).observe(seconds)`. Kept per bucket (the last for +Inf), then the
    sum: exposed cumulative, with the count."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 buckets: Sequence[float], registry: Registry) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self.buckets = tuple(sorted(buckets))
        self._le = [f'le="{go_float(b)}"' for b in self.buckets] + ['le="+Inf"']
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *labelvalues: str) -> HistogramChild:
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = HistogramChild(
                self.buckets, self._cells(labelvalues, len(self.buckets) + 2))
        return child

    def expose(self, children: list[tuple[tuple[str, ...], list[float]]],
               lines: list[str]) -> None:
        if not children:
            return
        self._head(lines)
        name = self.name
        for labels, values in children:
            running = 0.0
            for le, count in zip(self._le, values, strict=False):
                running += count
                lines.append(f"{name}_bucket{self._labels(labels, le)} {go_float(running)}")
            plain = self._labels(labels)
            lines.append(f"{name}_sum{plain} {go_float(values[-1])}")
            lines.append(f"{name}_count{plain} {go_float(running)}")


class HistogramChild:
    __slots__ = ("_bounds", "_cells", "_sum")

    def __init__(self, bounds: tuple[float, ...], cells: Cells) -> None:
        self._bounds = bounds
        self._cells = cells
        self._sum = len(bounds) + 1

    def observe(self, value: float) -> None:
        cells = self._cells
        cells[bisect_left(self._bounds, value)] += 1  # a bucket holds values <= its bound
        cells[self._sum] += value


class Gauge(_Family):
    """A value read at scrape time: `function`, or the last `set`. Never shared
    between workers (see the module's docstring)."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str, *, registry: Registry,
                 function: Callable[[], float] | None = None) -> None:
        super().__init__(name, documentation, (), registry)
        self._value = 0.0
        self._function = function

    def set(self, value: float) -> None:
        self._value = value

    def get(self) -> float:
        return float(self._function()) if self._function is not None else self._value

    def expose(self, children: list[tuple[tuple[str, ...], list[float]]],
               lines: list[str]) -> None:
        self._head(lines)
        lines.append(f"{self.name} {go_float(self.get())}")


# The `method` label values, as Go's promhttp gives them: these methods, written in
# upper or lower case, by their lower-case name; any other (`FOO`, `Get`) "unknown".
METHOD_LABELS = {spelled: name.lower() for name in (
    "GET", "PUT", "HEAD", "POST", "DELETE", "CONNECT", "OPTIONS", "NOTIFY", "TRACE", "PATCH")
    for spelled in (name, name.lower())}


class Metrics:
    """The gateway's collectors. `inflight` is read at scrape time: with several
    workers, the shared limiter's count (every worker's)."""

    def __init__(self, registry: Registry, *, max_inflight: int,
                 inflight: Callable[[], float]) -> None:
        # The OpenFaaS names, labels and HELP texts, word for word.
        self.requests = Counter(
            "http_requests_total", "total HTTP requests processed", ["code", "method"],
            registry=registry)
        self.request_duration = Histogram(
            "http_request_duration_seconds", "Seconds spent serving HTTP requests.",
            ["code", "method"], buckets=OPENFAAS_BUCKETS, registry=registry)
        self.inflight = Gauge(
            "http_requests_in_flight", "total HTTP requests in-flight", registry=registry,
            function=inflight)
        self.max_inflight = Gauge(
            "watchdog_max_inflight", "The concurrency limit (0: none).", registry=registry)
        self.max_inflight.set(max_inflight)
        self.rejected = Counter(
            "watchdog_rejected_requests_total",
            "Requests answered 429 because max_inflight functions were running.",
            registry=registry)
        # The wait queue (max_queue): why requests were turned away, how many wait
        # now (set by the queue), how long those served waited.
        self.rejections = Counter(
            "watchdog_rejections_total",
            "Requests answered 429 (503 at shutdown), by reason: max_inflight (no queue), "
            "queue_full, queue_timeout, shutdown.", ["reason"], registry=registry)
        self.queue_depth = Gauge(
            "watchdog_queue_depth", "Requests waiting for a slot now.", registry=registry)
        self._queue_wait = Histogram(
            "watchdog_queue_wait_seconds", "Seconds requests waited in the queue.",
            [], buckets=FUNCTION_BUCKETS, registry=registry).labels()
        self.function_duration = Histogram(
            "watchdog_function_duration_seconds",
            "Run time of the function process, by exit status (a code or a signal name).",
            ["exit_status"], buckets=FUNCTION_BUCKETS, registry=registry)
        # Label lookups cost a tuple and a dict: keep the children we have made.
        self._request_children: dict[tuple[int, str], tuple[CounterChild, HistogramChild]] = {}
        self._function_children: dict[str, HistogramChild] = {}
        self._rejection_children: dict[str, CounterChild] = {}

    def observe_request(self, code: int, method: str, seconds: float) -> None:
        # Any token is a method a client may send: as Go's promhttp, those outside
        # its list are one label value, so that clients cannot grow the series.
        key = (code, METHOD_LABELS.get(method, "unknown"))
        children = self._request_children.get(key)
        if children is None:
            labels = (str(code), key[1])
            children = (self.requests.labels(*labels), self.request_duration.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def observe_rejection(self, reason: str) -> None:
        self.rejected.inc()
        child = self._rejection_children.get(reason)
        if child is None:
            child = self._rejection_children[reason] = self.rejections.labels(reason)
        child.inc()

    def observe_function(self, exit_status: str, seconds: float) -> None:
        child = self._function_children.get(exit_status)
        if child is None:
            child = self._function_children[exit_status] = self.function_duration.labels(
                exit_status)
        child.observe(seconds)


# --- several workers -------------------------------------------------------------------

# A worker's file: a header (the offset where the next entry goes), then entries, each
# (cell count, key length), the key, padding to 8 bytes, the cells (float64). An entry
# is written whole before the header moves past it, so a reader sees whole entries
# only; a cell is an aligned 8-byte store, which no reader sees half done.
_HEADER = struct.Struct("=Q")
_ENTRY = struct.Struct("=II")
# Sparse: only the pages written take disk and memory. A few hundred children fit
# in a page or two (labels are bounded: status codes, methods, exit statuses).
FILE_SIZE = 4 * 2**20
SUFFIX = ".cells"


class SharedRegistry(Registry):
    """One worker's registry: its numbers in a file of its own in `folder`
    (`<pid>-<random>.cells`: a pid may come again, a file is never taken over), its
    exposition the sum of every such file there."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder
        path = os.path.join(folder, f"{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, FILE_SIZE)
            self._map = mmap.mmap(fd, FILE_SIZE)
        finally:
            os.close(fd)
        self._end = _HEADER.size
        _HEADER.pack_into(self._map, 0, self._end)
        self._full = False
        self._others: dict[str, mmap.mmap] = {}  # every file's map, by name, kept

    def _allocate(self, key: Key, size: int) -> Cells:
        encoded = key.encode()
        start = self._end + _ENTRY.size + len(encoded)
        start += -start % 8
        end = start + 8 * size
        if end > FILE_SIZE:
            if not self._full:
                self._full = True
                log.error("metrics file full: new series are this worker's own",
                          extra={FIELDS: {"folder": self.folder}})
            return [0.0] * size
        _ENTRY.pack_into(self._map, self._end, size, len(encoded))
        self._map[self._end + _ENTRY.size:self._end + _ENTRY.size + len(encoded)] = encoded
        self._end = end
        _HEADER.pack_into(self._map, 0, end)
        return memoryview(self._map)[start:end].cast("d")

    def numbers(self) -> dict[Key, list[float]]:
        totals: dict[Key, list[float]] = {}
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:  # removed by the last worker of a supervisor that is gone
            names = list(self._others)
        for name in names:
            if not name.endswith(SUFFIX):
                continue
            mapped = self._others.get(name)
            if mapped is None:
                try:
                    with open(os.path.join(self.folder, name), "rb") as f:
                        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                except (OSError, ValueError):  # gone, or not yet sized
                    continue
                self._others[name] = mapped
            for key, values in _entries(mapped):
                total = totals.get(key)
                if total is None:
                    totals[key] = values
                else:
                    for i, value in enumerate(values):
                        total[i] += value
        # Series that did not fit in the file, this worker's only.
        for key, cells in self._cells.items():
            if isinstance(cells, list):
                totals[key] = [a + b for a, b in zip(totals.get(key, [0.0] * len(cells)),
                                                     cells, strict=True)]
        return totals


def _entries(mapped: mmap.mmap) -> Iterable[tuple[Key, list[float]]]:
    (end,) = _HEADER.unpack_from(mapped, 0)
    offset = _HEADER.size
    while offset < min(end, len(mapped)):
        size, length = _ENTRY.unpack_from(mapped, offset)
        key_start = offset + _ENTRY.size
        key = mapped[key_start:key_start + length].decode()
        start = key_start + length
        start += -start % 8
        yield key, list(struct.unpack_from(f"={size}d", mapped, start))
        offset = start + 8 * size
