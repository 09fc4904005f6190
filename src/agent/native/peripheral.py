"""Devices plugged in and out (native/uevent.c; events in docs/sources/uevent.md): the
kernel's uevents (USB devices and interfaces, block devices, network interfaces added and
removed) and rtnetlink's link messages (carrier up and down), from one handle with two
sockets.

    with PeripheralSource() as source:       # needs CAP_NET_ADMIN for the link dump's buffer
        for fd in source.filenos():
            selector.register(fd, EVENT_READ)
        ...
        pump(source.drain, sink, outbox.put)

`decode` feeds one datagram as received, with its sender's netlink port id (tests, fuzz
seeds, benchmarks): a sender other than the kernel (port id != 0) is counted as spoofed.
"""

from __future__ import annotations

import os
from typing import Literal

from agent._core import ffi, lib
from agent.native._base import C_ONLY_IN_PYTHON, CoreStats, NativeHandle, check, more
from agent.native.sink import EventSink
from agent.record import field, record

Socket = Literal["uevent", "link"]
_SOCKETS = {"uevent": lib.AM_PERIPH_UEVENT, "link": lib.AM_PERIPH_LINK}


@record(frozen=True)
class PeripheralOptions:
    """See native/core_peripheral.h. None keeps the core's default.

    listen: open the sockets (False: a decoder for `decode` only).
    sysfs_root: where sysfs attributes are read ("" reads none; None: /sys).
    """

    rcvbuf: int | None = None
    uevents: bool | None = None
    links: bool | None = None
    sysfs: bool | None = None
    max_links: int | None = None
    max_datagrams: int | None = None
    listen: bool = field(default=True, metadata=C_ONLY_IN_PYTHON)
    sysfs_root: str | None = field(default=None, metadata=C_ONLY_IN_PYTHON)


def _sys_error(errno_value: int, what: str) -> OSError:
    return OSError(errno_value, f"{what}: {os.strerror(errno_value)}")


class PeripheralSource(NativeHandle):
    """uevents and link messages -> `periph` events in an EventSink."""

    _what = "peripheral source"

    def __init__(self, options: PeripheralOptions | None = None) -> None:
        options = options or PeripheralOptions()
        self._make(lib.am_periph_new, lib.am_periph_free, options, "struct am_periph_options",
                   lib.am_periph_default_options)
        self._appended = ffi.new("uint64_t *")
        if options.sysfs_root is not None:
            check(lib.am_periph_set_sysfs(self._live(), options.sysfs_root.encode()),
                  f"am_periph_set_sysfs({options.sysfs_root!r})")
        if options.listen:
            status = lib.am_periph_listen(self._live())
            if status != lib.AM_OK:
                err = int(lib.am_periph_errno(self._live()))
                self.close()
                if status == lib.AM_PERIPH_ERR_SYS:
                    raise _sys_error(err, "peripheral listen")
                check(status, "am_periph_listen")

    def filenos(self) -> list[int]:
        """The open non-blocking sockets, for selectors (none for a decoder)."""
        handle = self._live()
        fds = (int(lib.am_periph_fileno(handle, which)) for which in _SOCKETS.values())
        return [fd for fd in fds if fd >= 0]

    def drain(self, sink: EventSink) -> bool:
        """Reads what both sockets hold into events in the sink. True (more) when it stopped
        because the sink is full or a call's datagram bound was reached: take the batches and
        call again."""
        status = lib.am_periph_drain(self._live(), sink.handle, self._appended)
        if status == lib.AM_PERIPH_ERR_SYS:
            raise _sys_error(int(lib.am_periph_errno(self._live())), "peripheral recv")
        return more(status, "am_periph_drain", limit=True)

    def decode(self, sink: EventSink, data: bytes, socket: Socket = "uevent",
               sender: int = 0) -> int:
        """Decodes one datagram as received on `socket` from netlink port `sender` (0: the
        kernel); returns the events appended. CoreFullError: the sink refused one (counted in
        `dropped`)."""
        status = lib.am_periph_decode(self._live(), sink.handle, _SOCKETS[socket],
                                      ffi.from_buffer(data), len(data), sender, self._appended)
        check(status, "am_periph_decode")
        return int(self._appended[0])

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_periph_stats", lib.am_periph_stats)
