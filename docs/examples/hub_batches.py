#!/usr/bin/env python3
"""Decode the agent's messages as the IoT Hub's Event Hub-compatible endpoint delivers them:
one message body in, one JSON object per event out (docs/operations.md, "Reading the batches
on the hub side"). Needs only msgpack (python3-msgpack, or pip install msgpack).

    python3 hub_batches.py BODY...            each file one message body, - for stdin
    python3 hub_batches.py --envelope BODY... also a line {"envelope": {...}} before the
                                              events of each message (who sent it, seq, drops)

A body is an envelope (docs/outbox.md): a msgpack map (content type application/msgpack,
the default Upload format) or the same map as JSON (application/json, content encoding utf-8,
when the twin's Upload format is json). Its `events` are the event maps of docs/events.md; a
msgpack bin value (bytes the kernel gave, such as an argv that is not UTF-8) becomes text with
\\xNN escapes for the bytes that are not UTF-8, as `micro-agent decode` prints it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import msgpack

SCHEMA_VERSION = 1  # the envelope's `v` this reader knows


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} has no JSON form")


def envelope(body: bytes, content_type: str | None = None) -> dict[str, Any]:
    """The envelope of one message body. content_type as the message carries it; without it
    the first byte tells (a JSON envelope starts with '{', a msgpack map never does)."""
    if content_type == "application/json" or (content_type is None and body[:1] == b"{"):
        doc = json.loads(body)
    else:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=False,
                              unicode_errors="backslashreplace")
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise ValueError("not an envelope: a map with an events array")  # noqa: TRY004 (bad data)
    if doc.get("v") != SCHEMA_VERSION:
        raise ValueError(f"envelope schema {doc.get('v')!r}; this reader knows {SCHEMA_VERSION}")
    if doc.get("n") != len(doc["events"]):
        raise ValueError(f"n is {doc.get('n')!r} but the message holds {len(doc['events'])} events")
    return doc


def json_lines(body: bytes, content_type: str | None = None,
               with_envelope: bool = False) -> Iterator[str]:
    """One JSON line per event of the message (after its envelope's header when asked)."""
    doc = envelope(body, content_type)
    events = doc.pop("events")
    if with_envelope:
        yield json.dumps({"envelope": doc}, default=_text, ensure_ascii=False)
    for event in events:
        yield json.dumps(event, default=_text, ensure_ascii=False)


def main(argv: list[str]) -> int:
    with_envelope = "--envelope" in argv
    paths = [a for a in argv if a != "--envelope"] or ["-"]
    failed = 0
    for path in paths:
        try:
            if path == "-":
                body = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as f:
                    body = f.read()
            for line in json_lines(body, with_envelope=with_envelope):
                print(line)
        except (OSError, ValueError) as err:
            print(f"hub_batches: {path}: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
