"""The utmp / wtmp / btmp reader (native/utmp.c): login records -> `login` events in an
EventSink, read incrementally from a remembered offset (docs/sources/utmp.md).

Python only moves handles and counters here: the C core reads the file, decodes the records
and encodes the events into the sink's msgpack batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent._core import ffi, lib
from agent.native._base import CoreArgumentError, CoreStats, NativeHandle, c_options, check, more
from agent.native.sink import EventSink
from agent.record import asdict, fields, record

KINDS: dict[str, int] = {
    "wtmp": int(lib.AM_UTMP_WTMP),
    "btmp": int(lib.AM_UTMP_BTMP),
    "utmp": int(lib.AM_UTMP_UTMP),
}

# The glibc record sizes the core decodes (0: decided from the file).
LAYOUTS = (0, 384, 400)


@record(frozen=True)
class UtmpOptions:
    """Bounds of one reader; see native/core_utmp.h. None keeps the default.

    layout: 0 auto (default), 384 or 400 bytes per record; max_records: records one read call
    decodes at most (4096); chunk_records: records per pread (64); max_sessions: open logins
    remembered to complete logouts (256)."""

    layout: int | None = None
    max_records: int | None = None
    chunk_records: int | None = None
    max_sessions: int | None = None


@record(frozen=True)
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
    def from_dict(cls, data: Mapping[str, Any]) -> UtmpState:
        try:
            return cls(**{f.name: int(data[f.name]) for f in fields(cls)})
        except (KeyError, TypeError, ValueError) as exc:
            raise CoreArgumentError(f"not a utmp reader state: {data!r}") from exc


_STATE_NAMES = [f.name for f in fields(UtmpState)]


def _kind_number(kind: str | int) -> int:
    if isinstance(kind, str):
        if kind not in KINDS:
            raise CoreArgumentError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
        return KINDS[kind]
    if kind not in KINDS.values():
        raise CoreArgumentError(f"unknown utmp kind {kind!r}")
    return int(kind)


def _options(options: UtmpOptions | None) -> Any:
    return c_options(options, "struct am_utmp_options", lib.am_utmp_default_options)


def _no_defaults(raw: Any) -> None:
    """A state has no defaults: every field is given."""


class _Handle(NativeHandle):
    """The C reader handle, its scratch out-parameters and the shared calls."""

    _what = "utmp reader"

    def __init__(self, handle: Any, options: UtmpOptions | None) -> None:
        self._own(handle, lib.am_utmp_close, options)
        self._events = ffi.new("uint32_t *")

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_utmp_stats", lib.am_utmp_stats)


class UtmpReader(_Handle):
    """Follows one utmp-format file: `read(sink)` appends the events of records added since
    the last call; `snapshot(sink)` the sessions a utmp file lists now.

    kind: "wtmp" (history), "btmp" (failed logins) or "utmp" (current sessions). The file need
    not exist yet. read() and snapshot() follow the drain contract (native.pump).
    """

    def __init__(
        self,
        path: str | bytes,
        kind: str | int = "wtmp",
        options: UtmpOptions | None = None,
    ) -> None:
        raw = path.encode() if isinstance(path, str) else bytes(path)
        if not raw or b"\0" in raw:
            raise CoreArgumentError(f"bad path {path!r}")
        handle = lib.am_utmp_open(raw, _kind_number(kind), _options(options))
        super().__init__(handle, options)
        self.path = raw.decode(errors="surrogateescape")
        self._state = ffi.new("struct am_utmp_state *")

    def read(self, sink: EventSink) -> bool:
        """The events of the new whole records (a partial last record waits); True (more)
        when records are still waiting: take the sink's batches and call again."""
        return more(lib.am_utmp_read(self._live(), sink.handle, self._events),
                    "am_utmp_read", limit=True)

    def snapshot(self, sink: EventSink) -> bool:
        """`active` events for the USER_PROCESS records of the whole file; more as read()."""
        return more(lib.am_utmp_snapshot(self._live(), sink.handle, self._events),
                    "am_utmp_snapshot", limit=True)

    def state(self) -> UtmpState:
        check(lib.am_utmp_state(self._live(), self._state), "am_utmp_state")
        return UtmpState(**{name: int(getattr(self._state, name)) for name in _STATE_NAMES})

    def restore(self, state: UtmpState | Mapping[str, Any]) -> None:
        """Resume at a state taken earlier (by this process or a previous one)."""
        if not isinstance(state, UtmpState):
            state = UtmpState.from_dict(state)
        raw = c_options(state, "struct am_utmp_state", _no_defaults)
        check(lib.am_utmp_restore(self._live(), raw), "am_utmp_restore")


class UtmpDecoder(_Handle):
    """Records from memory (not a file), with the same decoding and login matching."""

    def __init__(self, kind: str | int = "wtmp", options: UtmpOptions | None = None):
        handle = lib.am_utmp_new(_kind_number(kind), _options(options))
        super().__init__(handle, options or UtmpOptions())
        self._consumed = ffi.new("size_t *")

    def feed(self, sink: EventSink, data: bytes) -> tuple[int, int]:
        """(events appended, bytes of whole records used); the rest waits for the caller (the
        sink filled or the per-call bound was reached: take the sink's batches, feed the rest)."""
        status = lib.am_utmp_feed(
            self._live(), ffi.from_buffer(data), len(data), sink.handle, self._consumed,
            self._events,
        )
        more(status, "am_utmp_feed", limit=True)
        return int(self._events[0]), int(self._consumed[0])
