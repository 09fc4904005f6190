"""Aggregation of identical events within an interval (native/aggregate.c, see
native/core_aggregate.h): batches in, batches out, no per-event Python object."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from agent._core import ffi, lib
from agent.native._base import CoreArgumentError, CoreStats, NativeHandle, c_options, check, more
from agent.native.sink import EventSink, pump
from agent.record import record

if TYPE_CHECKING:
    from agent.native.dns import DnsCapture

AggregateKind = Literal["none", "process", "network", "file_system", "peripheral"]
_KINDS = {"none": lib.AM_AGG_NONE, "process": lib.AM_AGG_PROCESS, "network": lib.AM_AGG_NETWORK,
          "file_system": lib.AM_AGG_FILE_SYSTEM, "peripheral": lib.AM_AGG_PERIPHERAL}


@record(frozen=True)
class AggregatorOptions:
    """The bounds of native/core_aggregate.h (kind and accept are set by the Aggregator)."""

    cache_size: int = 256
    max_bytes: int = 1 << 20


class Aggregator(NativeHandle):
    """Merges the `exec` events (kind "process": same command line, program and user) or the
    `net` / `conn` events (kind "network": same addresses, service port, protocol, direction and
    program) or the `fs` events (kind "file_system": same path and operation) of an interval
    into entries with `hits`, `first` and `last`; kind "none" merges
    nothing. `cache_size` bounds the entries: when it is reached the oldest entry is written
    out early and counted in `evicted`. `accept` names the event types (`t`) taken; the
    others are skipped and counted (empty: all are taken); taken events that are not of the
    kind pass through unchanged."""

    def __init__(
        self,
        kind: AggregateKind,
        cache_size: int = 256,
        max_bytes: int = 1 << 20,
        accept: Sequence[str] = (),
    ) -> None:
        if kind not in _KINDS:
            raise CoreArgumentError(f"unknown aggregation kind {kind!r}")
        options = AggregatorOptions(cache_size, max_bytes)
        opts = c_options(options, "struct am_agg_options", lib.am_agg_default_options)
        opts.kind = _KINDS[kind]
        accept_text = ",".join(accept).encode("ascii", "replace")
        if len(accept_text) >= 128 or any(not name or "," in name for name in accept):
            raise CoreArgumentError(f"accept={list(accept)!r}: at most 127 characters of names")
        opts.accept = accept_text
        handle = lib.am_agg_new(opts)
        self._own(handle, lib.am_agg_free, options)
        self._next = ffi.new("uint32_t *")
        self._hosts: DnsCapture | None = None

    def add(self, batch: bytes, out: EventSink) -> list[bytes]:
        """Reads one batch of a source into `out`; returns the batches `out` sealed meanwhile
        (the open one stays)."""
        handle = self._live()
        self._next[0] = 0
        taken: list[bytes] = []

        def add_rest(sink: EventSink) -> bool:
            return more(lib.am_agg_add_batch(handle, batch, len(batch), self._next, sink.handle),
                        "am_agg_add_batch")

        pump(add_rest, out, taken.extend)
        return taken

    def flush(self, out: EventSink) -> list[bytes]:
        """The end of an interval: every entry goes to `out`; returns the batches `out` sealed
        meanwhile."""
        handle = self._live()
        taken: list[bytes] = []
        pump(lambda sink: more(lib.am_agg_flush(handle, sink.handle), "am_agg_flush"), out,
             taken.extend)
        return taken

    def snapshot(self, out: EventSink) -> list[bytes]:
        """A checkpoint of the entries held (as flush would write them), which stay: every
        batch `out` sealed meanwhile plus its open one."""
        handle = self._live()
        self._next[0] = 0
        taken: list[bytes] = []
        pump(lambda sink: more(lib.am_agg_snapshot(handle, self._next, sink.handle),
                               "am_agg_snapshot"), out, taken.extend, seal=True)
        return taken

    def restore(self, batch: bytes, out: EventSink) -> list[bytes]:
        """Reads a snapshot's batch back into the cache (hits adding up with entries of the
        same key); entries that cannot stay go to `out` as at eviction. Returns the batches
        `out` sealed meanwhile."""
        handle = self._live()
        self._next[0] = 0
        taken: list[bytes] = []

        def restore_rest(sink: EventSink) -> bool:
            return more(lib.am_agg_restore_batch(handle, batch, len(batch), self._next,
                                                 sink.handle), "am_agg_restore_batch")

        pump(restore_rest, out, taken.extend)
        return taken

    def filter_local_addresses(self, addresses: Sequence[str] | None) -> None:
        """Leaves out the events whose `laddr` is not one of these (NetworkActivity_Devices:
        the addresses of the watched interfaces; an empty list leaves out every event with an
        `laddr`); events without `laddr` pass. None: no filter."""
        if addresses is None:
            check(lib.am_agg_filter_laddr(self._live(), 0, ffi.NULL, 0), "am_agg_filter_laddr")
            return
        if any(not a or "," in a for a in addresses):
            raise CoreArgumentError(f"addresses {list(addresses)!r}: empty or with a comma")
        text = ",".join(addresses).encode("ascii", "replace")
        check(lib.am_agg_filter_laddr(self._live(), 1, text, len(text)), "am_agg_filter_laddr")

    def use_hosts(self, capture: DnsCapture | None) -> None:
        """`conn` and `net` entries made from now on get `host` from the capture's address ->
        name cache (by `raddr`) when the event has none; None: no more. The aggregator keeps
        the capture alive while it uses it; call use_hosts(None) before closing the capture."""
        if self._hosts is not None and self._hosts is not capture:
            self._hosts.unlink(self)
        handle = ffi.NULL if capture is None else capture.link(self)
        check(lib.am_agg_use_hosts(self._live(), handle), "am_agg_use_hosts")
        self._hosts = capture

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_agg_stats", lib.am_agg_stats)

    def counters(self, *names: str) -> tuple[int, ...]:
        """Only the named fields of stats(), read without copying the others."""
        return self._read_fields("struct am_agg_stats", lib.am_agg_stats, names)
