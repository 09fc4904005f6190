"""The /proc scanner (native/proc_scan.c; events in docs/sources/proc-scan.md): a snapshot of
every process, one `process` event each, and the system facts as one `sysinfo` event.

    sink = EventSink()
    scan_processes(sink, take=outbox.put)    # batches handed over whenever the sink fills
    system_facts(sink)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Callable, Optional

from agent.native._base import (
    CoreArgumentError,
    CoreFullError,
    CoreMemoryError,
    check,
    ffi,
    lib,
)
from agent.native.sink import EventSink


@dataclass(frozen=True)
class ProcScanOptions:
    """See native/core_proc_scan.h. None keeps the core's default."""

    max_argv_bytes: Optional[int] = None
    max_args: Optional[int] = None
    # Polling: each run reports new processes (`exec`) and gone ones (`exit`), not all.
    changes: Optional[bool] = None
    max_tracked: Optional[int] = None


@dataclass(frozen=True)
class ProcScanStats:
    scans: int
    processes: int
    vanished: int
    partial: int
    denied: int
    kthreads: int
    argv_truncated: int
    oversize: int
    facts: int
    dropped: int
    started: int
    exited: int
    untracked: int
    tracked: int


_STAT_NAMES = [f.name for f in fields(ProcScanStats)]


class ProcScanner:
    """A /proc scanner handle: keeps its buffers and counters across snapshots."""

    def __init__(self, options: Optional[ProcScanOptions] = None) -> None:
        opts = ffi.new("struct am_pscan_options *")
        lib.am_pscan_default_options(opts)
        if options is not None:
            for f in fields(ProcScanOptions):
                value = getattr(options, f.name)
                if value is not None:
                    value = int(value)
                    if not 0 <= value <= 0xFFFFFFFF:
                        raise CoreArgumentError(f"{f.name}={value} is out of range")
                    setattr(opts, f.name, value)
        handle = lib.am_pscan_new(opts)
        if handle == ffi.NULL:
            if options is not None:
                raise CoreArgumentError(f"the core rejected the scan options {options}")
            raise CoreMemoryError("am_pscan_new: no memory or no /proc")
        self._p: Any = handle
        self._appended = ffi.new("uint64_t *")
        self._stats = ffi.new("struct am_pscan_stats *")

    def _handle(self) -> Any:
        if self._p is None:
            raise CoreArgumentError("the scanner is closed")
        return self._p

    def scan_step(self, sink: EventSink) -> tuple[int, bool]:
        """Walks on until the snapshot is complete or the sink is full: (events appended,
        complete). After (n, False) take the sink's batches and call again."""
        status = lib.am_pscan_run(self._handle(), sink.handle, self._appended)
        if status == lib.AM_PSCAN_ERR_SYS:
            err = int(lib.am_pscan_errno(self._p))
            raise OSError(err, f"/proc scan: {os.strerror(err)}")
        if status != lib.AM_ERR_FULL:
            check(status, "am_pscan_run")
        return int(self._appended[0]), status == lib.AM_OK

    def scan(
        self, sink: EventSink, take: Optional[Callable[[list[bytes]], object]] = None
    ) -> int:
        """One whole snapshot; returns the events appended. When the sink fills midway its
        batches go to `take` and the walk goes on; without `take` a full sink raises
        CoreFullError (the events so far stay in the sink; the next call starts afresh)."""
        total = 0
        while True:
            appended, complete = self.scan_step(sink)
            total += appended
            if complete:
                return total
            if take is None:
                lib.am_pscan_reset(self._p)
                raise CoreFullError(f"the sink filled after {total} process events")
            take(sink.take())

    def system_facts(self, sink: EventSink) -> None:
        """Appends one `sysinfo` event; CoreFullError when the sink has no room."""
        check(lib.am_pscan_system_facts(self._handle(), sink.handle), "am_pscan_system_facts")

    def stats(self) -> ProcScanStats:
        lib.am_pscan_stats(self._handle(), self._stats)
        return ProcScanStats(**{n: int(getattr(self._stats, n)) for n in _STAT_NAMES})

    def close(self) -> None:
        if self._p is None:
            return
        handle, self._p = self._p, None
        lib.am_pscan_free(handle)

    def __enter__(self) -> "ProcScanner":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_p", None) is not None:
            self.close()


_default: Optional[ProcScanner] = None


def _scanner() -> ProcScanner:
    global _default
    if _default is None:
        _default = ProcScanner()
    return _default


def scan_processes(
    sink: EventSink, take: Optional[Callable[[list[bytes]], object]] = None
) -> int:
    """A snapshot of every process into the sink (see ProcScanner.scan)."""
    return _scanner().scan(sink, take)


def system_facts(sink: EventSink) -> None:
    """One `sysinfo` event into the sink."""
    _scanner().system_facts(sink)


def scan_stats() -> ProcScanStats:
    """Counters of the scanner behind scan_processes / system_facts."""
    return _scanner().stats()


__all__ = [
    "ProcScanOptions",
    "ProcScanStats",
    "ProcScanner",
    "scan_processes",
    "scan_stats",
    "system_facts",
]
