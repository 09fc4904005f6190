"""The process events connector (NETLINK_CONNECTOR, cn_proc) as a live source
(native/proc_connector.c; events in docs/sources/proc-connector.md).

    with ProcConnector() as source:          # needs CAP_NET_ADMIN in the initial namespaces
        selector.register(source.fileno(), EVENT_READ)
        ...
        pump(source.drain, sink, outbox.put) # every readable datagram -> events in the sink

`drain(sink)` returns True (more) when it stopped because the sink is full: take its batches
and call again (native.pump does); the datagrams not yet read stay with the kernel. `decode` feeds datagram bytes instead of the
socket (tests, fuzz seeds, benchmarks).
"""

from __future__ import annotations

import os

from agent._core import ffi, lib
from agent.native._base import C_ONLY_IN_PYTHON, CoreStats, NativeHandle, check, more
from agent.native.sink import EventSink
from agent.record import field, record


@record(frozen=True)
class ProcConnectorOptions:
    """See native/core_proc_connector.h. None keeps the core's default.

    listen: open the socket and subscribe (False: a decoder for `decode` only).
    """

    rcvbuf: int | None = None
    enrich: bool | None = None
    threads: bool | None = None
    max_argv_bytes: int | None = None
    max_args: int | None = None
    listen: bool = field(default=True, metadata=C_ONLY_IN_PYTHON)


def _sys_error(errno_value: int, what: str) -> OSError:
    """The system call's error: OSError(errno, "proc connector listen: Operation not
    permitted"), which the caller can tell from errno (EPERM: no CAP_NET_ADMIN)."""
    return OSError(errno_value, f"{what}: {os.strerror(errno_value)}")


class ProcConnector(NativeHandle):
    """cn_proc fork/exec/exit/uid/gid/sid/comm/ptrace/coredump events into an EventSink."""

    _what = "proc connector"

    def __init__(self, options: ProcConnectorOptions | None = None) -> None:
        options = options or ProcConnectorOptions()
        self._make(lib.am_cnproc_new, lib.am_cnproc_free, options, "struct am_cnproc_options",
                   lib.am_cnproc_default_options)
        self._appended = ffi.new("uint64_t *")
        self._consumed = ffi.new("size_t *")
        if options.listen:
            status = lib.am_cnproc_listen(self._live())
            if status != lib.AM_OK:
                err = int(lib.am_cnproc_errno(self._live()))
                self.close()
                if status == lib.AM_CNPROC_ERR_SYS:
                    raise _sys_error(err, "proc connector listen")
                check(status, "am_cnproc_listen")

    def fileno(self) -> int:
        """The non-blocking socket for selectors; -1 for a decoder that does not listen."""
        return int(lib.am_cnproc_fileno(self._live()))

    def drain(self, sink: EventSink) -> bool:
        """Reads every datagram the socket holds into events in the sink. True (more) when
        it stopped because the sink is full: take the batches and call again (the datagrams
        not yet read stay with the kernel)."""
        handle = self._live()
        status = lib.am_cnproc_drain(handle, sink.handle, self._appended)
        if status == lib.AM_CNPROC_ERR_SYS:
            raise _sys_error(int(lib.am_cnproc_errno(self._live())), "proc connector recv")
        return more(status, "am_cnproc_drain")

    def probe(self) -> int:
        """Makes each CPU whose losses are not known yet (nothing heard from it since listening,
        or an overrun since) send one event, so that the next drain counts what an overrun
        lost there even when the CPU would stay quiet (the end of a burst). Cheap when there
        is nothing to learn: call it every tick. Returns the probes sent."""
        sent = ffi.new("uint32_t *")
        status = lib.am_cnproc_probe(self._live(), sent)
        if status == lib.AM_CNPROC_ERR_SYS:
            raise _sys_error(int(lib.am_cnproc_errno(self._live())), "proc connector probe")
        check(status, "am_cnproc_probe")
        return int(sent[0])

    def decode(self, sink: EventSink, data: bytes) -> int:
        """Decodes received datagram bytes (one or more netlink messages) into the sink;
        returns the bytes used. Fewer than len(data): the sink filled; take its batches and
        decode the rest."""
        view = ffi.from_buffer(data)
        status = lib.am_cnproc_decode(
            self._live(), sink.handle, view, len(data), self._consumed, self._appended
        )
        more(status, "am_cnproc_decode")
        return int(self._consumed[0])

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_cnproc_stats", lib.am_cnproc_stats)

