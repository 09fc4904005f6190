"""The event sink the live sources write into (native/sink.c): their events, packed into
msgpack batches, taken by Python a batch at a time."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from agent.native._base import AM_OK, CoreArgumentError, CoreMemoryError, check, ffi, lib


@dataclass(frozen=True)
class SinkOptions:
    """batch_bytes: a batch never exceeds it (default 245760); max_batches: sealed batches
    held before the sources stop reading (default 8). None keeps the default."""

    batch_bytes: Optional[int] = None
    max_batches: Optional[int] = None


@dataclass(frozen=True)
class SinkStats:
    events: int
    batches: int
    dropped_full: int
    dropped_encode: int
    pending_batches: int
    memory: int


_STAT_NAMES = [f.name for f in fields(SinkStats)]


class EventSink:
    """Batches of events from the live sources; pass it to a source's drain or scan call."""

    def __init__(self, options: Optional[SinkOptions] = None) -> None:
        opts = ffi.new("struct am_sink_options *")
        lib.am_sink_default_options(opts)
        if options is not None:
            for f in fields(SinkOptions):
                value = getattr(options, f.name)
                if value is not None:
                    if not 0 <= value <= 0xFFFFFFFF:
                        raise CoreArgumentError(f"{f.name}={value} is out of range")
                    setattr(opts, f.name, value)
        handle = lib.am_sink_new(opts)
        if handle == ffi.NULL:
            if options is not None:
                raise CoreArgumentError(f"the core rejected the sink options {options}")
            raise CoreMemoryError("am_sink_new")
        self.handle: Any = ffi.gc(handle, lib.am_sink_free)
        self._data = ffi.new("uint8_t **")
        self._len = ffi.new("size_t *")
        self._events = ffi.new("uint32_t *")
        self._stats = ffi.new("struct am_sink_stats *")

    def full(self) -> bool:
        return bool(lib.am_sink_full(self.handle))

    def take(self) -> list[bytes]:
        """Every sealed batch, oldest first (each the bytes of one msgpack array)."""
        out: list[bytes] = []
        while lib.am_sink_take(self.handle, self._data, self._len, self._events) == AM_OK:
            out.append(bytes(ffi.buffer(self._data[0], self._len[0])))
        return out

    def seal(self) -> list[bytes]:
        """Seal the open batch and return every sealed batch."""
        check(lib.am_sink_seal(self.handle), "am_sink_seal")
        return self.take()

    def stats(self) -> SinkStats:
        lib.am_sink_stats(self.handle, self._stats)
        return SinkStats(**{name: int(getattr(self._stats, name)) for name in _STAT_NAMES})
