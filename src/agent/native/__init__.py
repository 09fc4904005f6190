"""The only importer of agent._core (this package: one module per C concern wraps it, all on
the protocol of _base.py): owns the C handles and turns C status codes into exceptions.

Nothing outside agent.native touches ffi or lib; the rest sees Python objects and batches of
msgpack bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent._core import ffi, lib
from agent.native._base import (
    AM_EMPTY,
    AM_OK,
    CoreArgumentError,
    CoreClosedError,
    CoreError,
    CoreFullError,
    CoreLimitError,
    CoreMemoryError,
    CoreStats,
    NativeHandle,
    more,
)
from agent.native._base import check as _check
from agent.native._base import cstr as _cstr
from agent.native.sink import EventSink, SinkOptions, pump
from agent.record import record

__all__ = [
    "AM_EMPTY",
    "AM_OK",
    "AuditOptions",
    "AuditParser",
    "CoreArgumentError",
    "CoreClosedError",
    "CoreError",
    "CoreFullError",
    "CoreLimitError",
    "CoreMemoryError",
    "EventSink",
    "MsgpackWriter",
    "NativeHandle",
    "SinkOptions",
    "arch_name",
    "pump",
    "record_type_name",
    "record_type_number",
    "syscall_name",
]

# ---------------------------------------------------------------------------------------------
# msgpack writer


class MsgpackWriter(NativeHandle):
    """The core's msgpack writer over a buffer capped at `cap` bytes (used by tests and by
    encoders that build small documents)."""

    _what = "msgpack writer"

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise CoreArgumentError("cap must be >= 0")
        handle = lib.am_mpw_new(cap)
        self._own(handle, lib.am_mpw_free)

    def write_nil(self) -> None:
        _check(lib.am_mpw_nil(self._live()), "nil")

    def write_bool(self, value: bool) -> None:
        _check(lib.am_mpw_bool(self._live(), 1 if value else 0), "bool")

    def write_int(self, value: int) -> None:
        if value >= 0:
            _check(lib.am_mpw_uint(self._live(), value), "uint")
        else:
            _check(lib.am_mpw_int(self._live(), value), "int")

    def write_float(self, value: float) -> None:
        _check(lib.am_mpw_float(self._live(), value), "float")

    def write_str(self, value: str) -> None:
        data = value.encode("utf-8")
        _check(lib.am_mpw_str(self._live(), data, len(data)), "str")

    def write_bin(self, value: bytes) -> None:
        _check(lib.am_mpw_bin(self._live(), value, len(value)), "bin")

    def write_array(self, count: int) -> None:
        _check(lib.am_mpw_array(self._live(), count), "array")

    def write_map(self, count: int) -> None:
        _check(lib.am_mpw_map(self._live(), count), "map")

    def reset(self) -> None:
        lib.am_mpw_reset(self._live())

    def getvalue(self) -> bytes:
        size = ffi.new("size_t *")
        data = lib.am_mpw_data(self._live(), size)
        return bytes(ffi.buffer(data, size[0]))


# ---------------------------------------------------------------------------------------------
# audit lookup tables


def arch_name(arch: int) -> str | None:
    """Name of an AUDIT_ARCH_* value, None when unknown."""
    return _cstr(lib.am_arch_name(arch & 0xFFFFFFFF))


def syscall_name(arch: int, number: int) -> str | None:
    """Syscall name for an AUDIT_ARCH_* value and number, None when unknown."""
    if not 0 <= number <= 0xFFFFFFFF:
        return None
    return _cstr(lib.am_syscall_name(arch & 0xFFFFFFFF, number))


def record_type_name(number: int) -> str | None:
    if not 0 <= number <= 0xFFFFFFFF:
        return None
    return _cstr(lib.am_record_type_name(number))


def record_type_number(name: str) -> int | None:
    data = name.encode("ascii", "replace")
    number = lib.am_record_type_number(data, len(data))
    return None if number < 0 else int(number)


# ---------------------------------------------------------------------------------------------
# audit parser


@record(frozen=True)
class AuditOptions:
    """Bounds of one parser; see native/core.h for their meaning. None keeps the default."""

    max_in_flight: int | None = None
    timeout_ms: int | None = None
    max_line_bytes: int | None = None
    max_event_bytes: int | None = None
    max_pending_bytes: int | None = None
    batch_bytes: int | None = None


class AuditParser(NativeHandle):
    """Audit text or netlink records in, msgpack batches out (see docs/events.md).

    The parser writes its events into an EventSink of its own (batch_bytes as the options',
    max_batches as given); every method returns the batches that became ready, oldest first;
    each batch is the bytes of one msgpack array of event maps. Memory stays within
    `stats().memory_bound` whatever the input.
    """

    _what = "audit parser"

    def __init__(
        self, options: AuditOptions | None = None, max_batches: int | None = None
    ) -> None:
        opts = self._make(lib.am_audit_new, lib.am_audit_free, options, "struct am_audit_options",
                          lib.am_audit_default_options)
        self.sink = EventSink(SinkOptions(batch_bytes=int(opts.batch_bytes),
                                          max_batches=max_batches))
        self._consumed = ffi.new("size_t *")

    @property
    def handle(self) -> Any:
        """The am_audit handle, for the wrappers that feed it another way (NetlinkDecoder)."""
        return self._live()

    def run(self, call: Callable[[EventSink], bool]) -> list[bytes]:
        """Pumps one of the parser's resumable calls into the own sink; the batches sealed."""
        out: list[bytes] = []
        pump(call, self.sink, out.extend)
        return out

    def consume(self, data: bytes, call: Callable[[Any, Any, int, Any], int], what: str
                ) -> list[bytes]:
        """Pumps `call(sink, bytes, length, consumed)`, a C call that uses a prefix of its
        input and says how much in *consumed, over all of data."""
        view = ffi.from_buffer(data)
        offset = 0

        def rest(sink: EventSink) -> bool:
            nonlocal offset
            status = call(sink.handle, view + offset, len(data) - offset, self._consumed)
            offset += self._consumed[0]
            return more(status, what)

        return self.run(rest)

    def feed(self, data: bytes) -> list[bytes]:
        """Log text in any chunking (a partial last line waits for the next call)."""
        handle = self._live()
        return self.consume(
            data, lambda sink, text, n, used: lib.am_audit_feed(handle, sink, text, n, used),
            "am_audit_feed")

    def feed_record(self, record_type: int, payload: bytes) -> list[bytes]:
        """One record as netlink delivers it: message type and text."""
        if not 0 <= record_type <= 0xFFFF:
            raise CoreArgumentError(f"record type {record_type} is out of range")
        handle = self._live()
        return self.run(lambda sink: more(
            lib.am_audit_feed_record(handle, sink.handle, record_type, payload, len(payload)),
            "am_audit_feed_record"))

    def expire(self, now_ms: int) -> list[bytes]:
        """Complete events idle for timeout_ms of wall time."""
        handle = self._live()
        return self.run(lambda sink: more(lib.am_audit_expire(handle, sink.handle, now_ms),
                                          "am_audit_expire"))

    def seal(self) -> list[bytes]:
        """Seal the open batch and return every ready batch."""
        self._live()
        return self.sink.seal()

    def flush(self) -> list[bytes]:
        """End of input: complete every open event and return all remaining batches."""
        handle = self._live()
        return self.run(lambda sink: more(lib.am_audit_flush(handle, sink.handle),
                                          "am_audit_flush"))

    def stats(self) -> CoreStats:
        """The parser's counters; memory and memory_bound include its sink's."""
        sink = self.sink.handle
        return self._read_stats("struct am_audit_stats", lambda h, out: lib.am_audit_stats(h, sink, out))
