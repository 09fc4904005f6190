"""The JSON form of events (docs/events.md): one JSON object per line, msgpack bin shown as
text with \\xNN escapes for the bytes that are not valid UTF-8."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import orjson


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} has no JSON form")


def batch_events(batch: bytes) -> list[dict[str, Any]]:
    """The events of one batch (a msgpack array of maps)."""
    events = msgpack.unpackb(batch, raw=False, strict_map_key=False)
    if not isinstance(events, list):
        raise ValueError("a batch is a msgpack array of events")  # noqa: TRY004 (bad data)
    return events


def event_line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, default=_bytes_as_text) + b"\n"


def batch_lines(batch: bytes) -> Iterator[bytes]:
    for event in batch_events(batch):
        yield event_line(event)
