"""The /proc scanner (native/proc_scan.c; events in docs/sources/proc-scan.md): a snapshot of
every process, one `process` event each (`micro-agent collect Process`), or, polling for
changes, the `exec` and `exit` events since the previous walk (Process_Mode Polling).

    with ProcScanner() as scanner:
        pump(scanner.scan, sink, outbox.put)     # batches handed over whenever the sink fills
"""

from __future__ import annotations

import os

from agent._core import ffi, lib
from agent.native._base import CoreStats, NativeHandle, more
from agent.native.sink import EventSink
from agent.record import record


@record(frozen=True)
class ProcScanOptions:
    """See native/core_proc_scan.h. None keeps the core's default."""

    max_argv_bytes: int | None = None
    max_args: int | None = None
    # Polling: each run reports new processes (`exec`) and gone ones (`exit`), not all.
    changes: bool | None = None
    max_tracked: int | None = None


class ProcScanner(NativeHandle):
    """A /proc scanner handle: keeps its buffers and counters across snapshots."""

    _what = "/proc scanner"

    def __init__(self, options: ProcScanOptions | None = None) -> None:
        self._make(lib.am_pscan_new, lib.am_pscan_free, options, "struct am_pscan_options",
                   lib.am_pscan_default_options)
        self._appended = ffi.new("uint64_t *")

    def scan(self, sink: EventSink) -> bool:
        """Walks on until the walk is complete (False) or the sink is full (True, more: take
        the sink's batches and call again; the walk resumes where it stopped)."""
        handle = self._live()
        status = lib.am_pscan_run(handle, sink.handle, self._appended)
        if status == lib.AM_PSCAN_ERR_SYS:
            err = int(lib.am_pscan_errno(handle))
            raise OSError(err, f"/proc scan: {os.strerror(err)}")
        return more(status, "am_pscan_run")

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_pscan_stats", lib.am_pscan_stats)

