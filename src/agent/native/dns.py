"""DNS answers from a packet socket (native/dns.c; docs/sources/dns.md).

    with DnsCapture(DnsOptions(ring_bytes=256 << 10)) as capture:   # needs CAP_NET_RAW
        aggregator.use_hosts(capture)       # conn / net entries get `host` from its cache
        pump(capture.drain, sink, deliver)  # every filled ring block -> `dns` events
        ...
        aggregator.use_hosts(None)          # before the capture closes

`drain(sink)` returns True (more) when it stopped because the sink is full: take its batches
and call again (it resumes at the packet it stopped before; the rest waits in the ring).
`feed_packet` / `feed_message` parse bytes instead of the ring (tests, fuzz seeds, benchmarks).
"""

from __future__ import annotations

import os
import struct
import weakref
from typing import TYPE_CHECKING

from agent._core import ffi, lib
from agent.native._base import (
    AM_EMPTY,
    C_ONLY_IN_PYTHON,
    CoreArgumentError,
    CoreStats,
    NativeHandle,
    c_options,
    check,
    more,
)
from agent.native.sink import EventSink
from agent.record import field, record

if TYPE_CHECKING:
    from agent.native.aggregate import Aggregator

MAX_DEVICES = 64


@record(frozen=True)
class DnsOptions:
    """See native/core_dns.h. None keeps the core's default.

    devices: interface names whose packets are taken (empty: all).
    listen: open the packet socket (False: a parser and cache for the feed calls only).
    """

    ring_bytes: int | None = None
    block_bytes: int | None = None
    block_ms: int | None = None
    max_hosts: int | None = None
    max_jumps: int | None = None
    devices: tuple[str, ...] = field(default=(), metadata=C_ONLY_IN_PYTHON)
    listen: bool = field(default=True, metadata=C_ONLY_IN_PYTHON)


def _sys_error(errno_value: int, what: str) -> OSError:
    return OSError(errno_value, f"{what}: {os.strerror(errno_value)}")


class DnsCapture(NativeHandle):
    """`dns` events from the DNS responses on the wire, and the address -> name cache."""

    _what = "dns capture"

    def __init__(self, options: DnsOptions | None = None) -> None:
        options = options or DnsOptions()
        devices = ",".join(options.devices).encode("ascii", "replace")
        if (len(options.devices) > MAX_DEVICES or len(devices) >= 1024
                or any(not name or "," in name for name in options.devices)):
            raise CoreArgumentError(f"devices={list(options.devices)!r}: at most {MAX_DEVICES}"
                                    " names, 1023 characters")
        opts = c_options(options, "struct am_dns_options", lib.am_dns_default_options)
        opts.devices = devices  # a char array: c_options leaves it to the wrapper
        self._own(lib.am_dns_new(opts), lib.am_dns_free, options)
        self._appended = ffi.new("uint32_t *")
        # Aggregators that consult the cache: unlinked before the C handle is freed.
        self._users: weakref.WeakSet[Aggregator] = weakref.WeakSet()
        self._host = ffi.new("char[]", 256)
        if options.listen:
            status = lib.am_dns_open(self._live())
            if status != lib.AM_OK:
                err = int(lib.am_dns_errno(self._live()))
                self.close()
                if status == lib.AM_DNS_ERR_SYS:
                    raise _sys_error(err, "dns packet socket")
                check(status, "am_dns_open")

    def link(self, aggregator: Aggregator) -> object:
        """The C handle, for Aggregator.use_hosts, which registers the aggregator so that
        close() unlinks it first (the C aggregator holds a plain pointer to the cache)."""
        self._users.add(aggregator)
        return self._live()

    def unlink(self, aggregator: Aggregator) -> None:
        self._users.discard(aggregator)

    def close(self) -> None:
        for aggregator in list(getattr(self, "_users", ())):
            if not aggregator.closed:
                aggregator.use_hosts(None)
        super().close()

    def fileno(self) -> int:
        """The non-blocking packet socket (readable when a ring block is ready); -1 when the
        capture does not listen."""
        return int(lib.am_dns_fileno(self._live()))

    def drain(self, sink: EventSink) -> bool:
        """Every filled ring block into `dns` events in the sink. True (more) when it stopped
        because the sink is full: take the batches and call again."""
        return more(lib.am_dns_drain(self._live(), sink.handle, self._appended), "am_dns_drain")

    def feed_packet(self, sink: EventSink, packet: bytes, ts_ms: int = 0) -> int:
        """One packet from its IP header on, as the ring holds it; returns the events
        appended. Raises CoreFullError when the sink is full."""
        check(lib.am_dns_feed_packet(self._live(), sink.handle, packet, len(packet), ts_ms,
                                     self._appended), "am_dns_feed_packet")
        return int(self._appended[0])

    def feed_message(self, sink: EventSink, message: bytes, ts_ms: int = 0,
                     server: str | None = None) -> int:
        """One DNS message alone (no IP header, no TCP length prefix); returns the events
        appended."""
        srv = ffi.NULL if server is None else server.encode("ascii")
        check(lib.am_dns_feed_message(self._live(), sink.handle, message, len(message), ts_ms,
                                      srv, self._appended), "am_dns_feed_message")
        return int(self._appended[0])

    def host(self, address: str) -> str | None:
        """The name the cache holds for an address (text as the sources write it)."""
        status = lib.am_dns_host(self._live(), address.encode("ascii"), self._host, 256)
        if status == AM_EMPTY:
            return None
        check(status, "am_dns_host")
        return bytes(ffi.string(self._host)).decode("ascii")

    def filter_program(self) -> list[tuple[int, int, int, int]]:
        """The classic BPF program the capture attaches: (code, jt, jf, k) per instruction."""
        count = ffi.new("uint32_t *")
        raw = ffi.new("uint8_t[]", 8 * 64)
        check(lib.am_dns_filter_program(self._live(), raw, 8 * 64, count),
              "am_dns_filter_program")
        data = bytes(ffi.buffer(raw, 8 * int(count[0])))
        return [(code, jt, jf, k) for code, jt, jf, k in struct.iter_unpack("=HBBI", data)]

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_dns_stats", lib.am_dns_stats)
