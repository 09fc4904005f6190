"""Aggregation of identical events within an interval (native/aggregate.c, see
native/core_aggregate.h): batches in, batches out, no per-event Python object."""

from __future__ import annotations

from dataclasses import dataclass, fields
from collections.abc import Sequence
from typing import Any, Literal, Optional

from agent.native._base import CoreArgumentError, check, ffi, lib
from agent.native.sink import EventSink

AggregateKind = Literal["none", "process", "network"]
_KINDS = {"none": lib.AM_AGG_NONE, "process": lib.AM_AGG_PROCESS, "network": lib.AM_AGG_NETWORK}


@dataclass(frozen=True)
class AggregatorStats:
    events_in: int
    merged: int
    entries: int
    emitted: int
    evicted: int
    passed: int
    skipped: int
    filtered: int
    malformed: int
    memory: int
    memory_bound: int


_STAT_NAMES = [f.name for f in fields(AggregatorStats)]


class Aggregator:
    """Merges the `exec` events (kind "process": same command line, program and user) or the
    `net` / `conn` events (kind "network": same addresses, service port, protocol, direction and
    program) of an interval into entries with `hits`, `first` and `last`; kind "none" merges
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
        opts = ffi.new("struct am_agg_options *")
        lib.am_agg_default_options(opts)
        opts.kind = _KINDS[kind]
        for name, value in (("cache_size", cache_size), ("max_bytes", max_bytes)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise CoreArgumentError(f"{name}={value} is out of range")
            setattr(opts, name, value)
        accept_text = ",".join(accept).encode("ascii", "replace")
        if len(accept_text) >= 128 or any(not name or "," in name for name in accept):
            raise CoreArgumentError(f"accept={list(accept)!r}: at most 127 characters of names")
        opts.accept = accept_text
        handle = lib.am_agg_new(opts)
        if handle == ffi.NULL:
            raise CoreArgumentError(
                f"the core rejected the aggregator options cache_size={cache_size} "
                f"max_bytes={max_bytes}"
            )
        self.kind = kind
        self._a: Any = ffi.gc(handle, lib.am_agg_free)
        self._next = ffi.new("uint32_t *")
        self._stats = ffi.new("struct am_agg_stats *")

    def add(self, batch: bytes, out: EventSink) -> list[bytes]:
        """Reads one batch of a source. Returns the batches of `out` that had to be taken to
        make room (the rest stay in `out`)."""
        taken: list[bytes] = []
        self._next[0] = 0
        while True:
            status = lib.am_agg_add_batch(self._a, batch, len(batch), self._next, out.handle)
            if status != lib.AM_ERR_FULL:
                check(status, "am_agg_add_batch")
                return taken
            taken += out.take()

    def flush(self, out: EventSink) -> list[bytes]:
        """The end of an interval: every entry goes to `out`. Returns the batches of `out` that
        had to be taken to make room."""
        taken: list[bytes] = []
        while True:
            status = lib.am_agg_flush(self._a, out.handle)
            if status != lib.AM_ERR_FULL:
                check(status, "am_agg_flush")
                return taken
            taken += out.take()

    def filter_local_addresses(self, addresses: Optional[Sequence[str]]) -> None:
        """Leaves out the events whose `laddr` is not one of these (NetworkActivity_Devices:
        the addresses of the watched interfaces; an empty list leaves out every event with an
        `laddr`); events without `laddr` pass. None: no filter."""
        if addresses is None:
            check(lib.am_agg_filter_laddr(self._a, 0, ffi.NULL, 0), "am_agg_filter_laddr")
            return
        if any(not a or "," in a for a in addresses):
            raise CoreArgumentError(f"addresses {list(addresses)!r}: empty or with a comma")
        text = ",".join(addresses).encode("ascii", "replace")
        check(lib.am_agg_filter_laddr(self._a, 1, text, len(text)), "am_agg_filter_laddr")

    def stats(self) -> AggregatorStats:
        lib.am_agg_stats(self._a, self._stats)
        return AggregatorStats(**{n: int(getattr(self._stats, n)) for n in _STAT_NAMES})
