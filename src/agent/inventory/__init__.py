"""Device inventory and posture gatherers: one snapshot per call, as events.

Each gatherer (sysinfo, users, firewall, sbom, baseline) reads the device once and returns a
`Snapshot`: its events (dicts with `t`, `ts`, `src` and short lowercase keys, see
docs/inventory.md), the errors it met (an unreadable file, a malformed line: counted with the
reason, never raised) and what it skipped as not applicable (no rpm, no opkg). Periodic
snapshots are not the hot path, so plain dicts are fine here; `encode_batches` packs them into
msgpack batches below the upload size, as many as needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

Event = dict[str, object]

# A batch never exceeds this many bytes unless told otherwise: the sink's default, which keeps
# one IoT Hub message (256 KB) with room for the envelope.
DEFAULT_BATCH_BYTES = 245760


@dataclass
class Snapshot:
    """One gatherer's result. errors: "what: reason" for each thing that could not be read or
    parsed; skipped: "what: reason" for each part that does not apply to this device."""

    events: list[Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def error(self, what: object, reason: object) -> None:
        self.errors.append(f"{what}: {reason}")

    def skip(self, what: object, reason: object) -> None:
        self.skipped.append(f"{what}: {reason}")


def now_ms() -> int:
    """Milliseconds since the epoch, UTC: the `ts` of every event of one snapshot."""
    return time.time_ns() // 1_000_000


def under(root: Path, path: str) -> Path:
    """`path` (absolute, as on the device) inside the tree at `root`."""
    return root / path.lstrip("/")


def read_text(root: Path, path: str, snap: Snapshot, *, missing_ok: bool = True) -> str | None:
    """The text of a file under root, or None. A missing file is no error when missing_ok (most
    files are optional on a small device); any other failure is recorded in snap.errors.
    Bytes that are not UTF-8 become U+FFFD: configuration text is ASCII in practice."""
    full = under(root, path)
    try:
        return full.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        if not missing_ok:
            snap.error(path, "missing")
        return None
    except OSError as exc:
        snap.error(path, exc.strerror or type(exc).__name__)
        return None


@dataclass(frozen=True)
class Batches:
    """msgpack batches (each one array of event maps) and the events too large for any batch."""

    batches: list[bytes]
    events: int
    dropped_too_large: int


def encode_batches(
    events: Iterable[Event], max_bytes: int = DEFAULT_BATCH_BYTES
) -> Batches:
    """Pack events into msgpack arrays of at most max_bytes each, in order, as many as needed.

    An event that alone exceeds max_bytes cannot be sent; it is counted in dropped_too_large,
    never silently lost."""
    if max_bytes < 16:
        raise ValueError(f"max_bytes={max_bytes} is too small for any batch")
    packer = msgpack.Packer(use_bin_type=True)
    batches: list[bytes] = []
    pending: list[bytes] = []
    pending_bytes = 0
    count = 0
    dropped = 0

    def seal() -> None:
        nonlocal pending, pending_bytes
        if pending:
            batches.append(packer.pack_array_header(len(pending)) + b"".join(pending))
            pending = []
            pending_bytes = 0

    for event in events:
        body = packer.pack(event)
        # The array header is at most 5 bytes (array32).
        if len(body) + 5 > max_bytes:
            dropped += 1
            continue
        if pending_bytes + len(body) + 5 > max_bytes:
            seal()
        pending.append(body)
        pending_bytes += len(body)
        count += 1
    seal()
    return Batches(batches, count, dropped)


def decode_batches(batches: Sequence[bytes]) -> list[Event]:
    """The events of encode_batches' batches, in order (for tests and `micro-agent decode`)."""
    events: list[Event] = []
    for batch in batches:
        decoded = msgpack.unpackb(batch, raw=False)
        if not isinstance(decoded, list):
            raise ValueError("a batch is one msgpack array")  # noqa: TRY004 (bad data)
        events.extend(decoded)
    return events


__all__ = [
    "DEFAULT_BATCH_BYTES",
    "Batches",
    "Event",
    "Snapshot",
    "decode_batches",
    "encode_batches",
    "now_ms",
    "read_text",
    "under",
]
