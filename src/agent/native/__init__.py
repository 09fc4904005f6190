"""The only importer of agent._core (this package: _base.py imports it, one module per C
concern wraps it): owns the C handles and turns C status codes into exceptions.

Nothing outside agent.native touches ffi or lib; the rest sees Python objects and batches of
msgpack bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from agent.native._base import (
    AM_EMPTY,
    AM_OK,
    CoreArgumentError,
    CoreError,
    CoreFullError,
    CoreLimitError,
    CoreMemoryError,
    check as _check,
    cstr as _cstr,
    ffi,
    lib,
)
from agent.native.sink import EventSink, SinkOptions, SinkStats

# ---------------------------------------------------------------------------------------------
# msgpack writer


class MsgpackWriter:
    """The core's msgpack writer over a buffer capped at `cap` bytes (used by tests and by
    encoders that build small documents)."""

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise CoreArgumentError("cap must be >= 0")
        handle = lib.am_mpw_new(cap)
        if handle == ffi.NULL:
            raise CoreMemoryError(f"am_mpw_new({cap})")
        self._w = ffi.gc(handle, lib.am_mpw_free)

    def write_nil(self) -> None:
        _check(lib.am_mpw_nil(self._w), "nil")

    def write_bool(self, value: bool) -> None:
        _check(lib.am_mpw_bool(self._w, 1 if value else 0), "bool")

    def write_int(self, value: int) -> None:
        if value >= 0:
            _check(lib.am_mpw_uint(self._w, value), "uint")
        else:
            _check(lib.am_mpw_int(self._w, value), "int")

    def write_float(self, value: float) -> None:
        _check(lib.am_mpw_float(self._w, value), "float")

    def write_str(self, value: str) -> None:
        data = value.encode("utf-8")
        _check(lib.am_mpw_str(self._w, data, len(data)), "str")

    def write_bin(self, value: bytes) -> None:
        _check(lib.am_mpw_bin(self._w, value, len(value)), "bin")

    def write_array(self, count: int) -> None:
        _check(lib.am_mpw_array(self._w, count), "array")

    def write_map(self, count: int) -> None:
        _check(lib.am_mpw_map(self._w, count), "map")

    def reset(self) -> None:
        lib.am_mpw_reset(self._w)

    def getvalue(self) -> bytes:
        size = ffi.new("size_t *")
        data = lib.am_mpw_data(self._w, size)
        return bytes(ffi.buffer(data, size[0]))


# ---------------------------------------------------------------------------------------------
# audit lookup tables


def arch_name(arch: int) -> Optional[str]:
    """Name of an AUDIT_ARCH_* value, None when unknown."""
    return _cstr(lib.am_arch_name(arch & 0xFFFFFFFF))


def syscall_name(arch: int, number: int) -> Optional[str]:
    """Syscall name for an AUDIT_ARCH_* value and number, None when unknown."""
    if not 0 <= number <= 0xFFFFFFFF:
        return None
    return _cstr(lib.am_syscall_name(arch & 0xFFFFFFFF, number))


def record_type_name(number: int) -> Optional[str]:
    if not 0 <= number <= 0xFFFFFFFF:
        return None
    return _cstr(lib.am_record_type_name(number))


def record_type_number(name: str) -> Optional[int]:
    data = name.encode("ascii", "replace")
    number = lib.am_record_type_number(data, len(data))
    return None if number < 0 else int(number)


# ---------------------------------------------------------------------------------------------
# audit parser


@dataclass(frozen=True)
class AuditOptions:
    """Bounds of one parser; see native/core.h for their meaning. None keeps the default."""

    max_in_flight: Optional[int] = None
    timeout_ms: Optional[int] = None
    max_line_bytes: Optional[int] = None
    max_event_bytes: Optional[int] = None
    max_pending_bytes: Optional[int] = None
    batch_bytes: Optional[int] = None
    max_batches: Optional[int] = None


@dataclass(frozen=True)
class AuditStats:
    bytes: int
    lines: int
    records: int
    events: int
    malformed: int
    long_lines: int
    truncated: int
    forced: int
    timeouts: int
    duplicates: int
    gaps: int
    batches: int
    memory: int
    memory_bound: int


_STAT_NAMES = [f.name for f in fields(AuditStats)]


class AuditParser:
    """Audit text or netlink records in, msgpack batches out (see docs/events.md).

    Every method returns the batches that became ready, oldest first; each batch is the bytes
    of one msgpack array of event maps. Memory stays within `stats().memory_bound` whatever
    the input.
    """

    def __init__(self, options: Optional[AuditOptions] = None) -> None:
        opts = ffi.new("struct am_audit_options *")
        lib.am_audit_default_options(opts)
        if options is not None:
            for name in _option_names():
                value = getattr(options, name)
                if value is not None:
                    if not 0 <= value <= 0xFFFFFFFF:
                        raise CoreArgumentError(f"{name}={value} is out of range")
                    setattr(opts, name, value)
        handle = lib.am_audit_new(opts)
        if handle == ffi.NULL:
            raise CoreArgumentError(f"the core rejected the audit options {options}")
        self._p = ffi.gc(handle, lib.am_audit_free)
        # The am_audit handle, for the wrappers that feed it another way (NetlinkDecoder).
        self.handle: Any = self._p
        self._consumed = ffi.new("size_t *")
        self._data = ffi.new("uint8_t **")
        self._len = ffi.new("size_t *")
        self._events = ffi.new("uint32_t *")
        self._stats = ffi.new("struct am_audit_stats *")

    def take_all(self, out: list[bytes]) -> None:
        """Appends every sealed batch to out, oldest first."""
        while lib.am_audit_take(self._p, self._data, self._len, self._events) == AM_OK:
            out.append(bytes(ffi.buffer(self._data[0], self._len[0])))

    def feed(self, data: bytes) -> list[bytes]:
        """Log text in any chunking (a partial last line waits for the next call)."""
        out: list[bytes] = []
        view = ffi.from_buffer(data)
        offset = 0
        total = len(data)
        while True:
            status = lib.am_audit_feed(self._p, view + offset, total - offset, self._consumed)
            offset += self._consumed[0]
            self.take_all(out)
            if status != lib.AM_ERR_FULL:
                _check(status, "am_audit_feed")
                return out

    def feed_record(self, record_type: int, payload: bytes) -> list[bytes]:
        """One record as netlink delivers it: message type and text."""
        if not 0 <= record_type <= 0xFFFF:
            raise CoreArgumentError(f"record type {record_type} is out of range")
        out: list[bytes] = []
        while True:
            status = lib.am_audit_feed_record(self._p, record_type, payload, len(payload))
            self.take_all(out)
            if status != lib.AM_ERR_FULL:
                _check(status, "am_audit_feed_record")
                return out

    def expire(self, now_ms: int) -> list[bytes]:
        """Complete events idle for timeout_ms of wall time."""
        out: list[bytes] = []
        while True:
            status = lib.am_audit_expire(self._p, now_ms)
            self.take_all(out)
            if status != lib.AM_ERR_FULL:
                _check(status, "am_audit_expire")
                return out

    def seal(self) -> list[bytes]:
        """Seal the open batch and return every ready batch."""
        out: list[bytes] = []
        _check(lib.am_audit_seal(self._p), "am_audit_seal")
        self.take_all(out)
        return out

    def flush(self) -> list[bytes]:
        """End of input: complete every open event and return all remaining batches."""
        out: list[bytes] = []
        while True:
            status = lib.am_audit_flush(self._p)
            self.take_all(out)
            if status != lib.AM_ERR_FULL:
                _check(status, "am_audit_flush")
                return out

    def stats(self) -> AuditStats:
        lib.am_audit_stats(self._p, self._stats)
        return AuditStats(**{name: int(getattr(self._stats, name)) for name in _STAT_NAMES})


def _option_names() -> list[str]:
    return [f.name for f in fields(AuditOptions)]
