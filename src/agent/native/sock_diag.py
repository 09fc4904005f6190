"""The socket table (native/sock_diag.c): snapshots of TCP and UDP sockets from sock_diag (or
/proc/net), their owning processes, and two products written into an EventSink: the listening
ports (`listen` events) and the connections opened and closed since the last call (`conn`
events). docs/sources/sock-diag.md describes the events and counters.

    with SocketTable() as table:
        table.snapshot()
        pump(table.listening, sink, outbox.put)
        pump(table.changes, sink, outbox.put)
"""

from __future__ import annotations

import errno
import os
from typing import Any, Literal

from agent._core import ffi, lib
from agent.native import _base
from agent.native._base import CoreArgumentError, CoreStats, NativeHandle, c_options, check, more
from agent.native.sink import EventSink
from agent.record import field, record

Source = Literal["auto", "diag", "procnet"]

_SOURCES: dict[str, int] = {
    "auto": lib.AM_SOCK_AUTO,
    "diag": lib.AM_SOCK_DIAG,
    "procnet": lib.AM_SOCK_PROCNET,
}
_NAMES = {lib.AM_SOCK_DIAG: "diag", lib.AM_SOCK_PROCNET: "procnet"}

IPPROTO_TCP = 6
IPPROTO_UDP = 17


@record(frozen=True)
class SocketTableOptions:
    """source: "auto" (sock_diag if a probe dump works, else /proc/net), "diag" or "procnet".
    The bounds (None keeps the core's default): see native/core_sock_diag.h."""

    source: Source = field(default="auto", metadata=_base.C_ONLY_IN_PYTHON)
    max_sockets: int | None = None
    max_owners: int | None = None
    map_owners: bool | None = None
    first_existing: bool | None = None
    timeout_ms: int | None = None
    skip_quiet_tcp: bool | None = None


def _c_options(options: SocketTableOptions) -> Any:
    if options.source not in _SOURCES:
        raise CoreArgumentError(f"source={options.source!r}: expected auto, diag or procnet")
    opts = c_options(options, "struct am_sock_options", lib.am_sock_default_options)
    opts.source = _SOURCES[options.source]
    return opts


class SocketTable(NativeHandle):
    """One socket table; `source` and `source_reason` say what it reads and why."""

    _what = "socket table"

    def __init__(self, options: SocketTableOptions | None = None) -> None:
        self.options = options if options is not None else SocketTableOptions()
        opts = _c_options(self.options)
        err = ffi.new("int *")
        chosen = lib.am_sock_probe(opts, err)
        if chosen == lib.AM_ERR_ARG:
            raise CoreArgumentError(f"the core rejected the socket table options {options}")
        if chosen < 0:
            raise _base.CoreLimitError(
                f"sock_diag is unavailable: {os.strerror(err[0]) if err[0] else 'no answer'}"
            )
        handle = lib.am_sock_new(opts)
        self._own(handle, lib.am_sock_free, self.options)
        self.source: str = _NAMES[int(lib.am_sock_source(handle, err))]
        self.source_reason: str = self._reason(int(err[0]))
        self._events = ffi.new("uint32_t *")

    def _reason(self, err: int) -> str:
        if self.options.source != "auto":
            return f"{self.source}: configured"
        if self.source == "diag":
            return "diag: NETLINK_SOCK_DIAG answers for TCP and UDP"
        name = errno.errorcode.get(err, str(err))
        return f"procnet: sock_diag unavailable ({name}: {os.strerror(err)})"

    def fileno(self) -> int:
        """The sock_diag netlink socket (non-blocking); -1 when reading /proc/net."""
        return int(lib.am_sock_fileno(self._live()))

    def snapshot(self) -> None:
        """Take a snapshot (dump, owner walk, commit). A dump that stays incomplete after one
        retry keeps the previous snapshot and is counted in stats().incomplete."""
        status = lib.am_sock_snapshot(self._live())
        if status != lib.AM_ERR_LIMIT:
            check(status, "am_sock_snapshot")

    def listening(self, sink: EventSink) -> bool:
        """`listen` events of the last snapshot into sink. True (more): the sink filled; take
        its batches and call again, the listing resumes (a call after a completed listing
        starts a new one)."""
        return more(lib.am_sock_listening(self._live(), sink.handle, self._events),
                    "am_sock_listening")

    def changes(self, sink: EventSink) -> bool:
        """`conn` open/close events since the last call into sink; more as listening()."""
        return more(lib.am_sock_changes(self._live(), sink.handle, self._events),
                    "am_sock_changes")

    # The decoders on their own (tests, fuzzing, replay).
    def begin(self) -> None:
        check(lib.am_sock_begin(self._live()), "am_sock_begin")

    def feed_diag(self, protocol: int, data: bytes) -> bool:
        """Netlink messages of one dump of `protocol` (6, 17); True at NLMSG_DONE."""
        status = lib.am_sock_feed_diag(self._live(), protocol, data, len(data))
        if status == lib.AM_ERR_LIMIT:
            return True  # NLMSG_ERROR ends the dump (counted in dump_errors)
        return bool(check(status, "am_sock_feed_diag") == lib.AM_EMPTY)

    def feed_procnet(self, protocol: int, family: int, data: bytes) -> None:
        """The text of one /proc/net file (family 2 or 10)."""
        check(
            lib.am_sock_feed_procnet(self._live(), protocol, family, data, len(data)),
            "am_sock_feed_procnet",
        )

    def commit(self, now_ms: int, map_owners: bool = True) -> None:
        if not 0 <= now_ms <= 0xFFFFFFFFFFFFFFFF:
            raise CoreArgumentError(f"now_ms={now_ms} is out of range")
        check(lib.am_sock_commit(self._live(), now_ms, 1 if map_owners else 0), "am_sock_commit")

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_sock_stats", lib.am_sock_stats)

    def counters(self, *names: str) -> tuple[int, ...]:
        """Only the named fields of stats(), read without copying the others."""
        return self._read_fields("struct am_sock_stats", lib.am_sock_stats, names)
