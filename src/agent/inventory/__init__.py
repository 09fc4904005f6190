"""Device inventory and posture gatherers: one snapshot per call, as events.

Each gatherer (sysinfo, users, firewall, sbom, baseline) reads the device once and returns a
`Snapshot`: its events (dicts with `t`, `ts`, `src` and short lowercase keys, see
docs/inventory.md), the errors it met (an unreadable file, a malformed line: counted with the
reason, never raised) and what it skipped as not applicable (no rpm, no opkg). Periodic
snapshots are not the hot path, so plain dicts are fine here; the collector hands a snapshot
to the agent's loop, which batches it like any other events.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.clock import wall_ms
from agent.record import field, record

Event = dict[str, object]


@record
class Snapshot:
    """One gatherer's result. errors: "what: reason" for each thing that could not be read or
    parsed; skipped: "what: reason" for each part that does not apply to this device;
    volatile: the events hold state that changes without the source's change mark moving
    (firewall: nft sets filled from the packet path), so no unchanged snapshot is reused."""

    events: list[Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    volatile: bool = False

    def error(self, what: object, reason: object) -> None:
        self.errors.append(f"{what}: {reason}")

    def skip(self, what: object, reason: object) -> None:
        self.skipped.append(f"{what}: {reason}")


def now_ms() -> int:
    """Milliseconds since the epoch, UTC: the `ts` of every event of one snapshot."""
    return wall_ms()


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


__all__ = [
    "Event",
    "Snapshot",
    "now_ms",
    "read_text",
    "under",
]


def on_path(name: str) -> str | None:
    """The executable `name` on $PATH, as shutil.which finds it; shutil itself (with bz2 and
    lzma, about 2 MB of RSS) stays out of the agent for this one look-up."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or os.curdir, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None
