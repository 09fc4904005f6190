"""The process events connector (NETLINK_CONNECTOR, cn_proc) as a live source
(native/proc_connector.c; events in docs/sources/proc-connector.md).

    with ProcConnector() as source:          # needs CAP_NET_ADMIN in the initial namespaces
        selector.register(source.fileno(), EVENT_READ)
        ...
        source.drain(sink)                   # every readable datagram -> events in the sink

`drain` returns early when the sink is full (`sink.full()`): take its batches and call again;
the datagrams not yet read stay with the kernel. `decode` feeds datagram bytes instead of the
socket (tests, fuzz seeds, benchmarks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Optional

from agent.native._base import CoreArgumentError, check, ffi, lib
from agent.native.sink import EventSink


@dataclass(frozen=True)
class ProcConnectorOptions:
    """See native/core_proc_connector.h. None keeps the core's default.

    listen: open the socket and subscribe (False: a decoder for `decode` only).
    """

    rcvbuf: Optional[int] = None
    enrich: Optional[bool] = None
    threads: Optional[bool] = None
    max_argv_bytes: Optional[int] = None
    max_args: Optional[int] = None
    listen: bool = True


@dataclass(frozen=True)
class ProcConnectorStats:
    datagrams: int
    messages: int
    events: int
    fork: int
    exec: int
    exit: int
    uid: int
    gid: int
    sid: int
    ptrace: int
    comm: int
    coredump: int
    acks: int
    ack_errors: int
    unknown: int
    malformed: int
    foreign: int
    threads_filtered: int
    enobufs: int
    gaps: int
    lost: int
    seq_resets: int
    gone: int
    partial: int
    denied: int
    reused: int
    argv_truncated: int
    oversize: int
    dropped: int


_STAT_NAMES = [f.name for f in fields(ProcConnectorStats)]
_C_OPTIONS = ("rcvbuf", "enrich", "threads", "max_argv_bytes", "max_args")


def _sys_error(status: int, errno_value: int, what: str) -> OSError:
    return OSError(errno_value, f"{what}: {os.strerror(errno_value)} (core status {status})")


class ProcConnector:
    """cn_proc fork/exec/exit/uid/gid/sid/comm/ptrace/coredump events into an EventSink."""

    def __init__(self, options: Optional[ProcConnectorOptions] = None) -> None:
        options = options or ProcConnectorOptions()
        opts = ffi.new("struct am_cnproc_options *")
        lib.am_cnproc_default_options(opts)
        for name in _C_OPTIONS:
            value = getattr(options, name)
            if value is None:
                continue
            number = int(value)
            if not 0 <= number <= 0xFFFFFFFF:
                raise CoreArgumentError(f"{name}={value} is out of range")
            setattr(opts, name, number)
        handle = lib.am_cnproc_new(opts)
        if handle == ffi.NULL:
            raise CoreArgumentError(f"the core rejected the proc connector options {options}")
        self._c: Any = handle
        self._appended = ffi.new("uint64_t *")
        self._consumed = ffi.new("size_t *")
        self._stats = ffi.new("struct am_cnproc_stats *")
        if options.listen:
            status = lib.am_cnproc_listen(handle)
            if status != lib.AM_OK:
                err = int(lib.am_cnproc_errno(handle))
                lib.am_cnproc_free(handle)
                self._c = None
                if status == lib.AM_CNPROC_ERR_SYS:
                    raise _sys_error(status, err, "proc connector listen")
                check(status, "am_cnproc_listen")

    def _handle(self) -> Any:
        if self._c is None:
            raise CoreArgumentError("the proc connector is closed")
        return self._c

    def fileno(self) -> int:
        """The non-blocking socket for selectors; -1 for a decoder that does not listen."""
        return int(lib.am_cnproc_fileno(self._handle()))

    def drain(self, sink: EventSink) -> int:
        """Reads every datagram the socket holds into events; returns how many events were
        appended. Returns early when the sink is full: take batches, call again."""
        status = lib.am_cnproc_drain(self._handle(), sink.handle, self._appended)
        if status == lib.AM_CNPROC_ERR_SYS:
            raise _sys_error(status, int(lib.am_cnproc_errno(self._c)), "proc connector recv")
        if status != lib.AM_ERR_FULL:
            check(status, "am_cnproc_drain")
        return int(self._appended[0])

    def decode(self, sink: EventSink, data: bytes) -> int:
        """Decodes received datagram bytes (one or more netlink messages) into the sink;
        returns the events appended. When the sink fills midway (`sink.full()`),
        `last_consumed` says how many bytes were used: take batches, decode the rest."""
        view = ffi.from_buffer(data)
        status = lib.am_cnproc_decode(
            self._handle(), sink.handle, view, len(data), self._consumed, self._appended
        )
        if status != lib.AM_ERR_FULL:
            check(status, "am_cnproc_decode")
        self.last_consumed = int(self._consumed[0])
        return int(self._appended[0])

    last_consumed: int = 0

    def stats(self) -> ProcConnectorStats:
        lib.am_cnproc_stats(self._handle(), self._stats)
        return ProcConnectorStats(**{n: int(getattr(self._stats, n)) for n in _STAT_NAMES})

    def close(self) -> None:
        """Unsubscribes (PROC_CN_MCAST_IGNORE), closes the socket, frees the handle."""
        if self._c is None:
            return
        handle, self._c = self._c, None
        lib.am_cnproc_free(handle)

    def __enter__(self) -> "ProcConnector":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_c", None) is not None:
            self.close()


__all__ = [
    "ProcConnector",
    "ProcConnectorOptions",
    "ProcConnectorStats",
]
