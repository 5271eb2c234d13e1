"""The JSON shapes the FaaS Supervisor treats as events, told apart as it does
(`faassupervisor/events/__init__.py`, `parse_event`), so that the gateway serves an
API-Gateway event itself and hands storage and delegated events to the supervisor.

Most JSON bodies are plain documents: a search for the few keys that mark an event
(at C speed, no parse) settles them. Only a body holding one of those keys is
parsed, off the event loop, and only when it has few containers (an event is a
small tree; a huge one is handed over rather than built here).
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

from watchdog import oscar_pod

# Keys whose presence, anywhere in the text, means the document may be an event.
MARKS = (b'"httpMethod"', b'"Records"', b'"event"', b'"event_type"')
# The supervisor's webhook sources (`Records[0].eventSource`).
STORAGE_SOURCES = frozenset({"aws:s3", "minio:s3", "OneTrigger", "rucio"})
# A larger document that may be an event is not parsed here: json.loads holds the
# GIL however it is run (in a thread too), and its time and memory grow with the
# number of values, which no count of containers bounds (`{"a":[0.5,0.5,…]}`).
# 256 KiB parse in a few milliseconds; events are a few KiB.
MAX_PARSED = 256 * 2**10
PIECE = 2**20  # searched at a time: about a millisecond

PLAIN = "plain"  # a JSON document: the input file as it is
API_GATEWAY = "api-gateway"  # `body` is the input, query parameters CONT_VAR_*
HAND_OVER = "hand-over"  # the supervisor's to serve


@dataclass(frozen=True)
class Event:
    kind: str
    reason: str = ""
    body: bytes = b""  # API-Gateway: the new input, JSON as it is or base64 to decode
    body_is_json: bool = False
    variables: dict[str, str] = field(default_factory=dict)


PLAIN_EVENT = Event(PLAIN)


def classify_file(path: str) -> Event:
    """The event a JSON body (written verbatim at `path`) is. Blocking: run it off
    the loop (searched a piece at a time, so that the loop gets the GIL between)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return PLAIN_EVENT
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:64].lstrip()[:1] != b"{" or not _has_mark(data, size):
                return PLAIN_EVENT
            if size > MAX_PARSED:
                return Event(HAND_OVER, "a large document that may be an event")
            text = data[:]
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return PLAIN_EVENT  # not JSON (file_stage_in reads bodies unchecked)
    return classify(document)


def _has_mark(data: mmap.mmap, size: int) -> bool:
    overlap = max(map(len, MARKS)) - 1
    for start in range(0, size, PIECE):
        end = min(size, start + PIECE + overlap)
        if any(data.find(mark, start, end) >= 0 for mark in MARKS):
            return True
    return False


def classify(event: Any) -> Event:
    """`parse_event`'s order: API Gateway, dCache, Rucio, delegated, storage."""
    if not isinstance(event, dict):
        return PLAIN_EVENT
    if "httpMethod" in event:
        return _api_gateway(event)
    if "event" in event and "subscription" in event:
        return Event(HAND_OVER, "dCache event")
    if "event_type" in event:
        return Event(HAND_OVER, "Rucio event")
    if "event" in event:
        # The supervisor reads `event` as an event of its own, whatever it holds.
        return Event(HAND_OVER, "delegated event")
    records = event.get("Records")
    if (isinstance(records, list) and records and isinstance(records[0], dict)
            and records[0].get("eventSource") in STORAGE_SOURCES):
        return Event(HAND_OVER, "storage event")
    return PLAIN_EVENT


def _api_gateway(event: dict[str, Any]) -> Event:
    variables = query_variables(event.get("queryStringParameters"))
    body = event.get("body") or ""
    # The supervisor reads `body` as an event again: JSON if it parses (an event
    # inside is served as one), else base64, whatever `isBase64Encoded` says.
    inner: Any = body
    if isinstance(body, str):
        try:
            inner = json.loads(body)
        except ValueError:
            return Event(API_GATEWAY, body=body.encode("utf-8", "surrogatepass"),
                         variables=variables)
        text = body
    else:
        text = json.dumps(body)
    shape = classify(inner)
    if shape.kind != PLAIN:
        return shape if shape.kind == HAND_OVER else Event(HAND_OVER, "nested API-Gateway event")
    return Event(API_GATEWAY, body=text.encode("utf-8", "surrogatepass"), body_is_json=True,
                 variables=variables)


def query_variables(parameters: Any) -> dict[str, str]:
    """`CONT_VAR_<name>` for each query parameter with a text value, as the
    supervisor sets them (empty values are skipped, as it skips them); names that
    cannot be variables are left out."""
    if not isinstance(parameters, dict):
        return {}
    variables = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not isinstance(value, str) or not value:
            continue
        key = oscar_pod.QUERY_PREFIX + name
        if "=" in key or "\0" in key or "\0" in value:
            continue
        variables[key] = value
    return variables
