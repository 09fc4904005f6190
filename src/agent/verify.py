"""`micro-agent verify`: the receiver's check that a device's batches are complete.

It reads batches as they arrive at the back end, never the agent's own state:

- a delivery directory of the local default (`<seq>-<prio>.msgpack` files, each one envelope as
  it would have been sent), or any directory or file of such envelopes;
- messages saved from the hub's Event Hub-compatible endpoint as JSON lines, one message per
  line (docs/uplink.md, "Checking what arrived"):
  `{"body_base64": "...", "properties": {...}, "system_properties": {...}}`, where `body` (the
  body as UTF-8 text, for a JSON message) or an already parsed JSON envelope in `body` may
  stand for `body_base64`; `properties` are the application properties the agent set (`seq`,
  `prio`, `agent`, `part`, `parts`), `system_properties` the hub's
  (`iothub-connection-device-id`, `iothub-connection-module-id`, `content-type`, ...).

Per device (the hub's device and module id where the input has them, else the envelope's `dev`
and `mod`, else its agent id) it reports the batches, the events by type, the sequence gaps,
duplicates, incomplete split batches, the drops the envelopes reported by reason, and the first
and last batch time. Sequence numbers are one counter per agent that carries on across restarts
(docs/outbox.md, "Sequence numbers"), so every number between the lowest and the highest seen
is expected, less those the envelopes themselves say were dropped (the `*_batches` reasons:
batches evicted or expired before they were sent). What remains is lost: `verify` exits 1.

The check needs no event decoded beyond its type; it holds a set of sequence numbers and a few
counters per device, so it reads a day of a fleet's messages in bounded memory per device.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from agent.envelope import JSON_TYPE, EnvelopeError, check_envelope, split_envelope
from agent.record import field, record

ENVELOPE_SUFFIXES = (".msgpack",)
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
# What a reason's name ends with when it stands for stored batches that never left the device
# (docs/outbox.md, "Drop reasons"): sequence numbers the receiver will never see.
BATCH_REASON_SUFFIX = "_batches"
SYSTEM_DEVICE = "iothub-connection-device-id"
SYSTEM_MODULE = "iothub-connection-module-id"
SYSTEM_CONTENT_TYPE = "content-type"


class VerifyInputError(ValueError):
    """An input that cannot be read at all (missing, not a file or directory)."""


@record
class Message:
    """One message as the back end received it: its body and where it says it came from."""

    body: bytes | dict[str, Any]
    origin: str  # file name, or file:line, for the report
    device: str = ""
    content_type: str | None = None


@record
class DeviceReport:
    """What arrived from one device."""

    device: str
    messages: int = 0
    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0
    # A batch split into parts (a JSON form larger than a message): seq -> (parts, seen)
    parts: dict[int, tuple[int, set[int]]] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    boots: set[int] = field(default_factory=set)
    first_ts: int | None = None
    last_ts: int | None = None

    def missing(self) -> list[int]:
        """The sequence numbers between the lowest and highest seen that did not arrive."""
        if not self.seqs:
            return []
        low, high = min(self.seqs), max(self.seqs)
        return [s for s in range(low, high + 1) if s not in self.seqs]

    def incomplete(self) -> dict[int, list[int]]:
        """seq -> the part numbers that did not arrive, for split batches."""
        out = {}
        for seq, (count, seen) in sorted(self.parts.items()):
            absent = [i for i in range(1, count + 1) if i not in seen]
            if absent:
                out[seq] = absent
        return out

    def explained(self) -> int:
        """Batches the envelopes say were dropped before they could be sent."""
        return sum(n for reason, n in self.drops.items() if reason.endswith(BATCH_REASON_SUFFIX))

    def unexplained(self) -> int:
        return max(0, len(self.missing()) - self.explained())

    def complete(self) -> bool:
        return self.unexplained() == 0 and not self.incomplete()

    def as_dict(self) -> dict[str, Any]:
        missing = self.missing()
        return {
            "device": self.device,
            "messages": self.messages,
            "batches": len(self.seqs),
            "first_seq": min(self.seqs) if self.seqs else None,
            "last_seq": max(self.seqs) if self.seqs else None,
            "boots": sorted(self.boots),
            "missing": _ranges(missing),
            "missing_count": len(missing),
            "explained_by_drops": self.explained(),
            "unexplained": self.unexplained(),
            "duplicates": self.duplicates,
            "incomplete": {str(k): v for k, v in self.incomplete().items()},
            "events": dict(sorted(self.events.items())),
            "hits": dict(sorted(self.hits.items())),
            "drops": dict(sorted(self.drops.items())),
            "first": _iso(self.first_ts),
            "last": _iso(self.last_ts),
            "complete": self.complete(),
        }


@record
class Report:
    devices: dict[str, DeviceReport] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # "origin: why"

    def complete(self) -> bool:
        """Something arrived, all of it could be read, and no device lost a batch."""
        return (bool(self.devices) and not self.unreadable
                and all(d.complete() for d in self.devices.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"complete": self.complete(),
                "devices": [d.as_dict() for _, d in sorted(self.devices.items())],
                "unreadable": self.unreadable}


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _ranges(numbers: list[int]) -> list[str]:
    """[3, 4, 5, 9] -> ["3-5", "9"]: a day's gap stays one line."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    return out


# ---- reading ---------------------------------------------------------------------------------


def read_inputs(paths: Iterable[str], stdin: BinaryIO | None = None,
                unreadable: list[str] | None = None) -> Iterator[Message]:
    """Every message of the inputs, in the order given (a directory's files by name, which is
    seq order for a delivery directory). `-` reads JSON lines from stdin. A file that cannot be
    read is named in `unreadable` and skipped."""
    bad = unreadable if unreadable is not None else []
    for arg in paths:
        if arg == "-":
            if stdin is None:
                raise VerifyInputError("-: no standard input")
            yield from _json_lines(stdin, "-", bad)
            continue
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix in ENVELOPE_SUFFIXES + JSONL_SUFFIXES)
        elif path.exists():
            files = [path]
        else:
            raise VerifyInputError(f"{arg}: no such file or directory")
        for file in files:
            try:
                if file.suffix in JSONL_SUFFIXES:
                    with file.open("rb") as stream:
                        yield from _json_lines(stream, str(file), bad)
                else:
                    yield Message(file.read_bytes(), str(file))
            except OSError as err:
                bad.append(f"{file}: {err.strerror or err}")


def _json_lines(stream: BinaryIO, name: str, bad: list[str]) -> Iterator[Message]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        origin = f"{name}:{number}"
        try:
            yield _saved_message(json.loads(line), origin)
        except (ValueError, TypeError, binascii.Error) as err:
            bad.append(f"{origin}: {err}")


def _saved_message(doc: Any, origin: str) -> Message:
    if not isinstance(doc, dict):
        raise TypeError("a saved message is a JSON object")
    system = doc.get("system_properties") or {}
    if not isinstance(system, dict):
        raise TypeError("system_properties is not an object")
    device = str(system.get(SYSTEM_DEVICE, ""))
    if system.get(SYSTEM_MODULE):
        device += "/" + str(system[SYSTEM_MODULE])
    content_type = system.get(SYSTEM_CONTENT_TYPE)
    body: bytes | dict[str, Any]
    if "body_base64" in doc:
        body = base64.b64decode(str(doc["body_base64"]), validate=True)
    elif isinstance(doc.get("body"), str):
        body = str(doc["body"]).encode()
    elif isinstance(doc.get("body"), dict):
        body = doc["body"]
    else:
        raise TypeError("a saved message has body_base64, or body as text or an object")
    return Message(body, origin, device, str(content_type) if content_type else None)


def _envelope(message: Message) -> tuple[dict[str, Any], list[Any]]:
    body = message.body
    if isinstance(body, dict):
        head = dict(body)
        events = head.pop("events", None)
    elif message.content_type == JSON_TYPE or (message.content_type is None and body[:1] == b"{"):
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise EnvelopeError("a JSON envelope is an object")
        head = doc
        events = head.pop("events", None)
    else:
        head, events = split_envelope(body)
    if not isinstance(events, list):
        raise EnvelopeError("the envelope lacks its events array")
    check_envelope(head, events)
    if not isinstance(head["seq"], int) or not isinstance(head["ts"], int):
        raise EnvelopeError("the envelope's seq and ts are not numbers")
    return head, events


# ---- checking ---------------------------------------------------------------------------------


def verify(messages: Iterable[Message], report: Report | None = None) -> Report:
    report = report if report is not None else Report()
    for message in messages:
        try:
            head, events = _envelope(message)
        except (EnvelopeError, ValueError) as err:
            report.unreadable.append(f"{message.origin}: {err}")
            continue
        device = message.device or "/".join(str(head[k]) for k in ("dev", "mod") if head.get(k))
        device = device or str(head.get("agent", "?"))
        dev = report.devices.setdefault(device, DeviceReport(device))
        dev.messages += 1
        seq = int(head["seq"])
        parts = head.get("parts")
        if isinstance(parts, int) and parts > 1:
            index = int(head.get("part", 0))
            count, seen = dev.parts.setdefault(seq, (parts, set()))
            if index in seen:
                dev.duplicates += 1
                continue
            seen.add(index)
        elif seq in dev.seqs:
            dev.duplicates += 1
            continue
        dev.seqs.add(seq)
        if isinstance(head.get("boot"), int):
            dev.boots.add(int(head["boot"]))
        ts = int(head["ts"])
        dev.first_ts = ts if dev.first_ts is None else min(dev.first_ts, ts)
        dev.last_ts = ts if dev.last_ts is None else max(dev.last_ts, ts)
        drops = head.get("drops") or {}
        if isinstance(drops, dict):
            for reason, count in drops.items():
                if isinstance(count, int):
                    dev.drops[str(reason)] += count
        for event in events:
            kind = str(event.get("t", "?")) if isinstance(event, dict) else "?"
            dev.events[kind] += 1
            hits = event.get("hits", 1) if isinstance(event, dict) else 1
            dev.hits[kind] += hits if isinstance(hits, int) else 1
    return report


def render(report: Report) -> str:
    """The report for a person: one block per device, a verdict line at the end."""
    lines: list[str] = []
    for d in (report.devices[k] for k in sorted(report.devices)):
        doc = d.as_dict()
        lines.append(f"device {d.device}: {doc['batches']} batches (seq {doc['first_seq']}.."
                     f"{doc['last_seq']}, boots {', '.join(map(str, doc['boots'])) or '-'}), "
                     f"{d.messages} messages, {doc['first']} .. {doc['last']}")
        lines.append("  events: " + (", ".join(f"{k} {v} ({d.hits[k]} hits)"
                                               for k, v in doc["events"].items()) or "none"))
        if doc["drops"]:
            lines.append("  drops reported: " + ", ".join(f"{k} {v}" for k, v in doc["drops"].items()))
        if doc["missing_count"]:
            lines.append(f"  missing seq: {', '.join(doc['missing'])} ({doc['missing_count']}; "
                         f"{doc['explained_by_drops']} explained by the drops reported, "
                         f"{doc['unexplained']} lost)")
        if doc["duplicates"]:
            lines.append(f"  duplicates: {doc['duplicates']} (counted once)")
        for seq, absent in doc["incomplete"].items():
            lines.append(f"  batch {seq} incomplete: parts {', '.join(map(str, absent))} missing")
        lines.append("  complete" if d.complete() else "  INCOMPLETE")
    for bad in report.unreadable:
        lines.append(f"unreadable: {bad}")
    if not report.devices and not report.unreadable:
        lines.append("no batches found: nothing to verify")
    lines.append("verdict: complete" if report.complete() else "verdict: INCOMPLETE")
    return "\n".join(lines)
