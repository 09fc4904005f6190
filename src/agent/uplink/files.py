"""The embedded default uplink: with no IoT Hub, batches are delivered into a local directory.

Each delivered batch is one file, `<seq:020d>-<prio>.msgpack`, holding the envelope exactly as
it would be sent (docs/outbox.md); `micro-agent decode` prints it. A file is written through
agent.durable (a temporary name, fsynced, renamed, the directory fsynced), and only then is
the batch confirmed (removed from the outbox): a crash between the two delivers the batch
twice, under the same name (the same bytes), never zero times. The directory is bounded:
beyond max_files files or max_bytes bytes the oldest delivered files are removed, counted in
`rotated` (they were delivered; whoever reads the directory has had them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.durable import replace_file
from agent.outbox import Outbox

log = logging.getLogger("agent.uplink")

DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_BYTES = 64 << 20
SUFFIX = ".msgpack"


class LocalDelivery:
    def __init__(self, directory: Path, max_files: int = DEFAULT_MAX_FILES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_files < 1 or max_bytes < 1:
            raise ValueError(f"max_files={max_files}, max_bytes={max_bytes} must be positive")
        self.dir = directory
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)  # an unfinished write of a batch still in the outbox
        # Delivered files by name, oldest first (the names sort as the batches were sent), and
        # their total size: kept up to date at each file, never summed again (the directory
        # holds up to max_files of them, and each delivery would have walked them all).
        self._files: dict[str, int] = dict(sorted(
            (p.name, p.stat().st_size) for p in self.dir.glob(f"*{SUFFIX}")
        ))
        self._bytes = sum(self._files.values())
        self.delivered = 0
        self.rotated = 0
        self.errors = 0
        self.last_seq: int | None = None
        self._last_error = ""

    def describe(self) -> str:
        return f"local directory {self.dir}"

    def pump(self, outbox: Outbox) -> None:
        """Delivers every pending batch in send order."""
        while True:
            batch = outbox.next_batch()
            if batch is None:
                return
            name = f"{batch.info.seq:020d}-{batch.info.prio.lower()}{SUFFIX}"
            try:
                self._write(name, batch.payload)
            except OSError as err:
                self.errors += 1
                if str(err) != self._last_error:
                    self._last_error = str(err)
                    log.error("local delivery: cannot write %s: %s (the batch stays in the outbox)",
                              self.dir / name, err)
                return
            outbox.confirm(batch.info.id)
            self.delivered += 1
            self.last_seq = batch.info.seq
            self._rotate()

    def _write(self, name: str, payload: bytes) -> None:
        replace_file(self.dir / name, payload)
        # The same name again: the batch was delivered before a crash, and is now the newest.
        self._bytes += len(payload) - self._files.pop(name, 0)
        self._files[name] = len(payload)

    def _rotate(self) -> None:
        while len(self._files) > 1 and (len(self._files) > self.max_files or self._bytes > self.max_bytes):
            name = next(iter(self._files))
            size = self._files.pop(name)
            try:
                (self.dir / name).unlink()
            except FileNotFoundError:
                pass  # somebody took it: that is what the directory is for
            self._bytes -= size
            self.rotated += 1

    def status(self) -> dict[str, Any]:
        return {"kind": "local", "dir": str(self.dir), "delivered": self.delivered,
                "rotated": self.rotated, "errors": self.errors, "last_seq": self.last_seq,
                "files": len(self._files), "bytes": self._bytes}

    def close(self) -> None:
        pass
