"""Files changed under watched paths (inotify) as a live source (native/inotify.c; events in
docs/sources/inotify.md).

    with Inotify(InotifyOptions()) as source:
        source.set_paths(["/etc", "/usr/bin"])
        selector.register(source.fileno(), EVENT_READ)
        ...
        pump(source.drain, sink, outbox.put)  # every readable record -> `fs` events

`drain(sink)` returns True (more) when it stopped because the sink is full: take its batches
and call again (native.pump does). With `join_ms` the events wait that long for their actor,
which `audit(batch)` learns from the audit source's batches; `release(sink)` writes the events
whose wait is over (the collector calls it every tick).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agent._core import ffi, lib
from agent.native._base import (
    C_ONLY_IN_PYTHON,
    CoreArgumentError,
    CoreStats,
    NativeHandle,
    check,
    more,
)
from agent.native.sink import EventSink
from agent.record import field, record


@record(frozen=True)
class InotifyOptions:
    """See native/core_inotify.h. None keeps the core's default.

    listen: open the inotify descriptor (False: a decoder for `decode` only)."""

    recursive: bool | None = None
    open_events: bool | None = None
    max_watches: int | None = None
    max_pending: int | None = None
    join_ms: int | None = None
    actor_ttl_ms: int | None = None
    max_actors: int | None = None
    listen: bool = field(default=True, metadata=C_ONLY_IN_PYTHON)


def _sys_error(errno_value: int, what: str) -> OSError:
    return OSError(errno_value, f"{what}: {os.strerror(errno_value)}")


class Inotify(NativeHandle):
    """inotify records -> `fs` events into an EventSink."""

    _what = "inotify source"

    def __init__(self, options: InotifyOptions | None = None) -> None:
        options = options or InotifyOptions()
        self._make(lib.am_inotify_new, lib.am_inotify_free, options, "struct am_inotify_options",
                   lib.am_inotify_default_options)
        self._appended = ffi.new("uint64_t *")
        if options.listen:
            status = lib.am_inotify_open(self._live())
            if status != lib.AM_OK:
                err = int(lib.am_inotify_errno(self._live()))
                self.close()
                if status == lib.AM_INOTIFY_ERR_SYS:
                    raise _sys_error(err, "inotify_init1")
                check(status, "am_inotify_open")

    def fileno(self) -> int:
        """The non-blocking descriptor for selectors; -1 for a decoder."""
        return int(lib.am_inotify_fileno(self._live()))

    def set_paths(self, paths: Iterable[str]) -> None:
        """The roots watched (absolute paths): only the watches that the change concerns are
        added or removed."""
        items = [p.rstrip("/") or "/" for p in paths]
        if any("," in p or not p.startswith("/") for p in items):
            raise CoreArgumentError(f"paths must be absolute and without commas: {items!r}")
        text = ",".join(items).encode(errors="surrogateescape")
        check(lib.am_inotify_set_paths(self._live(), text, len(text)), "am_inotify_set_paths")

    def drain(self, sink: EventSink) -> bool:
        """Reads every record the descriptor holds into events in the sink (those waiting for
        their actor stay until their wait is over). True (more): the sink is full."""
        status = lib.am_inotify_drain(self._live(), sink.handle, self._appended)
        if status == lib.AM_INOTIFY_ERR_SYS:
            raise _sys_error(int(lib.am_inotify_errno(self._live())), "inotify read")
        return more(status, "am_inotify_drain")

    def release(self, sink: EventSink, force: bool = False) -> bool:
        """Writes the events whose wait for an actor is over (force: all). True (more): the
        sink is full."""
        status = lib.am_inotify_release(self._live(), sink.handle, int(force), self._appended)
        return more(status, "am_inotify_release")

    def decode(self, sink: EventSink, data: bytes) -> bool:
        """Decodes inotify records (as read(2) returns them) as drain does; True: the sink
        filled before the end (the rest is not decoded)."""
        status = lib.am_inotify_decode(self._live(), sink.handle, ffi.from_buffer(data),
                                       len(data), self._appended)
        return more(status, "am_inotify_decode")

    def audit(self, batch: bytes) -> None:
        """Learns the actors of paths from one batch of the audit source's events."""
        check(lib.am_inotify_audit(self._live(), ffi.from_buffer(batch), len(batch)),
              "am_inotify_audit")

    def test_watch(self, wd: int, path: str, report: bool = True, recurse: bool = True) -> None:
        """TEST ONLY: a watch descriptor of a decoder (listen=False) named by path."""
        check(lib.am_inotify_test_watch(self._live(), wd, path.encode(), int(report),
                                        int(recurse)), "am_inotify_test_watch")

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_inotify_stats", lib.am_inotify_stats)
