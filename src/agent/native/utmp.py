"""The utmp / wtmp / btmp reader (native/utmp.c): login records -> `login` events in an
EventSink, read incrementally from a remembered offset (docs/sources/utmp.md).

Python only moves handles and counters here: the C core reads the file, decodes the records
and encodes the events into the sink's msgpack batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any, Mapping, Optional, Union

from agent.native._base import (
    CoreArgumentError,
    CoreError,
    CoreMemoryError,
    check,
    ffi,
    lib,
)
from agent.native.sink import EventSink

KINDS: dict[str, int] = {
    "wtmp": int(lib.AM_UTMP_WTMP),
    "btmp": int(lib.AM_UTMP_BTMP),
    "utmp": int(lib.AM_UTMP_UTMP),
}

# The glibc record sizes the core decodes (0: decided from the file).
LAYOUTS = (0, 384, 400)


@dataclass(frozen=True)
class UtmpOptions:
    """Bounds of one reader; see native/core_utmp.h. None keeps the default.

    layout: 0 auto (default), 384 or 400 bytes per record; max_records: records one read call
    decodes at most (4096); chunk_records: records per pread (64); max_sessions: open logins
    remembered to complete logouts (256)."""

    layout: Optional[int] = None
    max_records: Optional[int] = None
    chunk_records: Optional[int] = None
    max_sessions: Optional[int] = None


@dataclass(frozen=True)
class UtmpStats:
    records: int
    events: int
    partial: int
    partial_lost: int
    truncations: int
    rotations: int
    malformed: int
    skipped: int
    unmatched: int
    evicted: int
    dropped: int
    io_errors: int
    missing: int
    layout: int


@dataclass(frozen=True)
class UtmpState:
    """Where a reader is in its file; persist `to_dict()` and give it back to restore()."""

    dev: int
    ino: int
    offset: int
    size: int
    layout: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UtmpState":
        try:
            return cls(**{f.name: int(data[f.name]) for f in fields(cls)})
        except (KeyError, TypeError, ValueError) as exc:
            raise CoreArgumentError(f"not a utmp reader state: {data!r}") from exc


_STAT_NAMES = [f.name for f in fields(UtmpStats)]
_STATE_NAMES = [f.name for f in fields(UtmpState)]


def _kind_number(kind: Union[str, int]) -> int:
    if isinstance(kind, str):
        if kind not in KINDS:
            raise CoreArgumentError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
        return KINDS[kind]
    if kind not in KINDS.values():
        raise CoreArgumentError(f"unknown utmp kind {kind!r}")
    return int(kind)


def _options(options: Optional[UtmpOptions]) -> Any:
    opts = ffi.new("struct am_utmp_options *")
    lib.am_utmp_default_options(opts)
    if options is not None:
        for f in fields(UtmpOptions):
            value = getattr(options, f.name)
            if value is not None:
                if not 0 <= value <= 0xFFFFFFFF:
                    raise CoreArgumentError(f"{f.name}={value} is out of range")
                setattr(opts, f.name, value)
    return opts


class _Handle:
    """The C reader handle, its scratch out-parameters and the shared calls."""

    def __init__(self, handle: Any) -> None:
        self._u: Any = ffi.gc(handle, lib.am_utmp_close)
        self._events = ffi.new("uint32_t *")
        self._stats = ffi.new("struct am_utmp_stats *")
        self.more = False

    def _live(self) -> Any:
        if self._u is None:
            raise CoreError("the utmp reader is closed")
        return self._u

    def _finish(self, status: int, what: str) -> int:
        """AM_ERR_FULL (take the sink's batches) and AM_ERR_LIMIT (the per-call bound) mean
        more records wait: `more` says so; the events appended are returned either way."""
        self.more = status in (lib.AM_ERR_FULL, lib.AM_ERR_LIMIT)
        if not self.more:
            check(status, what)
        return int(self._events[0])

    def stats(self) -> UtmpStats:
        lib.am_utmp_stats(self._live(), self._stats)
        return UtmpStats(**{name: int(getattr(self._stats, name)) for name in _STAT_NAMES})

    def close(self) -> None:
        """Closes the file(s) and frees the reader now (also done when it is collected)."""
        if self._u is not None:
            handle = self._u
            self._u = None
            ffi.release(handle)


class UtmpReader(_Handle):
    """Follows one utmp-format file: `read(sink)` appends the events of records added since
    the last call; `snapshot(sink)` the sessions a utmp file lists now.

    kind: "wtmp" (history), "btmp" (failed logins) or "utmp" (current sessions). The file need
    not exist yet. After read() or snapshot(), `more` is True when records are still waiting
    (the sink filled up: take its batches; or the per-call bound was reached): call again.
    """

    def __init__(
        self,
        path: Union[str, bytes],
        kind: Union[str, int] = "wtmp",
        options: Optional[UtmpOptions] = None,
    ) -> None:
        raw = path.encode() if isinstance(path, str) else bytes(path)
        if not raw or b"\0" in raw:
            raise CoreArgumentError(f"bad path {path!r}")
        handle = lib.am_utmp_open(raw, _kind_number(kind), _options(options))
        if handle == ffi.NULL:
            if options is not None:
                raise CoreArgumentError(f"the core rejected the utmp options {options}")
            raise CoreMemoryError("am_utmp_open")
        super().__init__(handle)
        self.path = raw.decode(errors="surrogateescape")
        self._state = ffi.new("struct am_utmp_state *")

    def read(self, sink: EventSink) -> int:
        """Events appended for the new whole records (a partial last record waits)."""
        return self._finish(lib.am_utmp_read(self._live(), sink.handle, self._events),
                            "am_utmp_read")

    def snapshot(self, sink: EventSink) -> int:
        """`active` events for the USER_PROCESS records of the whole file."""
        return self._finish(lib.am_utmp_snapshot(self._live(), sink.handle, self._events),
                            "am_utmp_snapshot")

    def state(self) -> UtmpState:
        check(lib.am_utmp_state(self._live(), self._state), "am_utmp_state")
        return UtmpState(**{name: int(getattr(self._state, name)) for name in _STATE_NAMES})

    def restore(self, state: Union[UtmpState, Mapping[str, Any]]) -> None:
        """Resume at a state taken earlier (by this process or a previous one)."""
        if not isinstance(state, UtmpState):
            state = UtmpState.from_dict(state)
        raw = ffi.new("struct am_utmp_state *")
        for name in _STATE_NAMES:
            value = getattr(state, name)
            limit = 0xFFFFFFFF if name == "layout" else 0xFFFFFFFFFFFFFFFF
            if not 0 <= value <= limit:
                raise CoreArgumentError(f"state {name}={value} is out of range")
            setattr(raw, name, value)
        check(lib.am_utmp_restore(self._live(), raw), "am_utmp_restore")

    def __enter__(self) -> "UtmpReader":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


class UtmpDecoder(_Handle):
    """Records from memory (not a file), with the same decoding and login matching."""

    def __init__(self, kind: Union[str, int] = "wtmp", options: Optional[UtmpOptions] = None):
        handle = lib.am_utmp_new(_kind_number(kind), _options(options))
        if handle == ffi.NULL:
            raise CoreArgumentError(f"the core rejected the utmp options {options}")
        super().__init__(handle)
        self._consumed = ffi.new("size_t *")

    def feed(self, sink: EventSink, data: bytes) -> tuple[int, int]:
        """(events appended, bytes of whole records used); the rest waits for the caller."""
        status = lib.am_utmp_feed(
            self._live(), ffi.from_buffer(data), len(data), sink.handle, self._consumed,
            self._events,
        )
        events = self._finish(status, "am_utmp_feed")
        return events, int(self._consumed[0])

    def __enter__(self) -> "UtmpDecoder":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
