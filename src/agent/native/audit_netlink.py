"""The live audit source (native/audit_netlink.c): kernel audit records over NETLINK_AUDIT,
assembled and encoded by the core's audit parser into msgpack batches.

    with AuditNetlink() as audit:
        print(audit.state)                    # "owner", "multicast: owned by pid 812 (auditd)"
        selector.register(audit.fileno(), EVENT_READ)
        ...
        batches = audit.drain()               # on readable
        batches += audit.expire(now_ms)       # on a timer, with poll_status() every second
        batches += audit.seal()               # when the pipeline wants what is assembled

Python sees only batches (bytes of one msgpack array of event maps, docs/events.md) and
counters; records never become Python objects. close() removes the agent's rules and gives
back what open changed (see docs/sources/audit-netlink.md).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Optional

from agent.native import AuditOptions, AuditParser, AuditStats
from agent.native._base import AM_OK, CoreArgumentError, check, ffi, lib

MODE_UNAVAILABLE = "unavailable"
MODE_OWNER = "owner"
MODE_MULTICAST = "multicast"
_MODES = {
    lib.AM_ANL_UNAVAILABLE: MODE_UNAVAILABLE,
    lib.AM_ANL_OWNER: MODE_OWNER,
    lib.AM_ANL_MULTICAST: MODE_MULTICAST,
}

RULE_KEY = "iot-micro-agent"


@dataclass(frozen=True)
class AuditNetlinkOptions:
    """What the source may do; see native/core_audit_netlink.h. None keeps the default."""

    take_ownership: Optional[bool] = None  # become the audit daemon when none is alive (True)
    backlog_limit: Optional[int] = None  # as owner, raise backlog_limit to this (8192)
    exec_rules: Optional[bool] = None  # execve/execveat rules (True)
    net_rules: Optional[bool] = None  # connect/accept/accept4/bind rules (True)
    compat_arch: Optional[bool] = None  # also the 32-bit compat arch (True)
    rcvbuf_bytes: Optional[int] = None  # event socket buffer (4 MiB)
    reply_timeout_ms: Optional[int] = None  # per kernel reply (2000)
    parser: Optional[AuditOptions] = None  # the audit parser's bounds


@dataclass(frozen=True)
class KernelStatus:
    """The kernel's audit status (struct audit_status)."""

    enabled: int
    failure: int
    pid: int
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int
    feature_bitmap: int
    backlog_wait_time: int
    backlog_wait_time_actual: int


@dataclass(frozen=True)
class AuditNetlinkStats:
    """Counters of the netlink side (see core_audit_netlink.h) and of its parser."""

    datagrams: int
    messages: int
    records: int
    bytes: int
    enobufs: int
    recv_errors: int
    truncated: int
    foreign: int
    malformed: int
    length_mismatch: int
    acks: int
    nl_errors: int
    replaced: int
    ignored: int
    kernel_lost_delta: int
    status_polls: int
    status_errors: int
    ownership_lost: int
    ownership_regained: int
    rules_installed: int
    rules_skipped: int
    rules_failed: int
    rules_removed: int
    rules_remove_failed: int
    stale_rules_removed: int
    parser_full: int
    parser: AuditStats

    @property
    def loss(self) -> int:
        """Everything known lost: kernel `lost` growth (records), ENOBUFS (overflows, each
        any number of records), serial gaps (events) and the times the kernel dropped us as
        its audit daemon (each any number of records)."""
        return self.kernel_lost_delta + self.enobufs + self.parser.gaps + self.ownership_lost


_NL_STATS = [f.name for f in fields(AuditNetlinkStats) if f.name != "parser"]
_PARSER_STATS = [f.name for f in fields(AuditStats)]
_STATUS = [f.name for f in fields(KernelStatus)]
_OPTIONS = [f.name for f in fields(AuditNetlinkOptions) if f.name != "parser"]


def _release(handle: Any) -> None:
    """Restores the kernel state and frees the handle (close(), or interpreter exit)."""
    lib.am_anl_close(handle)
    lib.am_anl_free(handle)


def _status(raw: Any) -> KernelStatus:
    return KernelStatus(**{name: int(getattr(raw, name)) for name in _STATUS})


class AuditNetlink:
    """The kernel audit stream as batches. Opening reads the audit status and chooses a mode:
    `owner` (no live audit daemon: this process becomes it, enables audit and raises the
    backlog), `multicast` (auditd or another process owns audit: read AUDIT_NLGRP_READLOG,
    change nothing of theirs) or `unavailable` (with the reason in `state`)."""

    def __init__(self, options: Optional[AuditNetlinkOptions] = None) -> None:
        self._remaining: list[bytes] = []
        self._last_stats: Optional[AuditNetlinkStats] = None
        options = options or AuditNetlinkOptions()
        opts = ffi.new("struct am_anl_options *")
        lib.am_anl_default_options(opts)
        for name in _OPTIONS:
            value = getattr(options, name)
            if value is None:
                continue
            value = int(value)
            if not 0 <= value <= 0xFFFFFFFF:
                raise CoreArgumentError(f"{name}={value} is out of range")
            setattr(opts, name, value)
        parser = ffi.NULL
        if options.parser is not None:
            parser = ffi.new("struct am_audit_options *")
            lib.am_audit_default_options(parser)
            for f in fields(AuditOptions):
                value = getattr(options.parser, f.name)
                if value is not None:
                    if not 0 <= value <= 0xFFFFFFFF:
                        raise CoreArgumentError(f"parser {f.name}={value} is out of range")
                    setattr(parser, f.name, value)
        handle = lib.am_anl_new(opts, parser)
        if handle == ffi.NULL:
            raise CoreArgumentError(f"the core rejected the audit netlink options {options}")
        self._h: Any = handle
        # Runs close at interpreter exit if the user forgot; close() runs it once.
        self._finalizer = weakref.finalize(self, _release, handle)
        self._data = ffi.new("uint8_t **")
        self._len = ffi.new("size_t *")
        self._events = ffi.new("uint32_t *")
        self._stats = ffi.new("struct am_anl_stats *")
        self._pstats = ffi.new("struct am_audit_stats *")
        self._status = ffi.new("struct am_anl_status *")
        try:
            check(lib.am_anl_open(handle), "am_anl_open")
        except BaseException:
            self._finalizer()
            raise

    # -- properties

    def _handle(self) -> Any:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is None or not finalizer.alive:
            return None
        return self._h

    @property
    def closed(self) -> bool:
        return self._handle() is None

    @property
    def mode(self) -> str:
        """`owner`, `multicast` or `unavailable`."""
        handle = self._handle()
        return MODE_UNAVAILABLE if handle is None else _MODES[lib.am_anl_mode(handle)]

    @property
    def state(self) -> str:
        """One line for the agent's reported properties: the mode and why."""
        handle = self._handle()
        if handle is None:
            return "closed"
        return str(ffi.string(lib.am_anl_state(handle)).decode("utf-8", "replace"))

    @property
    def rules_report(self) -> str:
        """What the rules step did: installed, skipped syscalls, refusals, stale rules."""
        handle = self._handle()
        if handle is None:
            return ""
        return str(ffi.string(lib.am_anl_rules_report(handle)).decode("utf-8", "replace"))

    @property
    def found_status(self) -> Optional[KernelStatus]:
        """The kernel's audit status when this source opened (what close() restores)."""
        handle = self._handle()
        if handle is None or lib.am_anl_found_status(handle, self._status) != AM_OK:
            return None
        return _status(self._status)

    def fileno(self) -> int:
        """The event socket, non-blocking, for selectors (-1 when closed)."""
        handle = self._handle()
        return -1 if handle is None else int(lib.am_anl_fileno(handle))

    # -- the stream

    def _take_all(self, out: list[bytes]) -> None:
        while lib.am_anl_take(self._h, self._data, self._len, self._events) == AM_OK:
            out.append(bytes(ffi.buffer(self._data[0], self._len[0])))

    def _until_done(self, call: Any, what: str, *args: Any) -> list[bytes]:
        out: list[bytes] = []
        handle = self._handle()
        if handle is None:
            return out
        while True:
            status = call(handle, *args)
            self._take_all(out)
            if status != lib.AM_ERR_FULL:
                check(status, what)
                return out

    def drain(self, seal: bool = False) -> list[bytes]:
        """Reads everything readable; returns the batches that became ready (with seal=True
        also the open one). After a `with` block closed the source, returns its last batches
        once."""
        if self._handle() is None:
            out, self._remaining = getattr(self, "_remaining", []), []
            return out
        out = self._until_done(lib.am_anl_drain, "am_anl_drain", 0)
        if seal:
            out += self.seal()
        return out

    def expire(self, now_ms: int) -> list[bytes]:
        """Completes events idle for the parser's timeout_ms of wall time (ms since epoch)."""
        if now_ms < 0:
            raise CoreArgumentError("now_ms must be >= 0")
        return self._until_done(lib.am_anl_expire, "am_anl_expire", now_ms)

    def seal(self) -> list[bytes]:
        """Seals the open batch and returns every ready batch."""
        handle = self._handle()
        if handle is None:
            return []
        check(lib.am_anl_seal(handle), "am_anl_seal")
        out: list[bytes] = []
        self._take_all(out)
        return out

    def poll_status(self) -> Optional[KernelStatus]:
        """AUDIT_GET now (call it every second or so): keeps kernel_lost_delta current and
        notices a lost ownership. None when the kernel did not answer (counted)."""
        handle = self._handle()
        if handle is None or lib.am_anl_poll_status(handle, self._status) != AM_OK:
            return None
        return _status(self._status)

    def stats(self) -> AuditNetlinkStats:
        """Counters; after close, those at close."""
        handle = self._handle()
        last: Optional[AuditNetlinkStats] = getattr(self, "_last_stats", None)
        if handle is None and last is not None:
            return last
        lib.am_anl_stats(handle if handle is not None else ffi.NULL, self._stats, self._pstats)
        parser = AuditStats(**{name: int(getattr(self._pstats, name)) for name in _PARSER_STATS})
        return AuditNetlinkStats(
            **{name: int(getattr(self._stats, name)) for name in _NL_STATS}, parser=parser
        )

    # -- closing

    def close(self) -> list[bytes]:
        """Reads what is left, removes the agent's rules, restores what open changed in the
        kernel, and returns the last batches (every open event completed). Safe to call
        again: later calls return []."""
        handle = self._handle()
        if handle is None:
            return []
        out: list[bytes] = []
        try:
            out += self.drain()
        finally:
            check(lib.am_anl_close(handle), "am_anl_close")
        out += self._until_done(lib.am_anl_flush, "am_anl_flush")
        self._last_stats = self.stats()
        self._finalizer()
        return out

    def __enter__(self) -> AuditNetlink:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        # The last batches stay for one drain() call: leaving the block loses nothing.
        self._remaining += self.close()


class NetlinkDecoder:
    """The decoder of received audit netlink datagrams without a socket (am_audit_nl_decode
    over a parser of its own): for tests, replays and fuzz-found inputs."""

    def __init__(self, options: Optional[AuditOptions] = None) -> None:
        self._parser = AuditParser(options)
        self._st = ffi.new("struct am_anl_stats *")
        self._consumed = ffi.new("size_t *")

    def feed(self, datagram: bytes) -> list[bytes]:
        """One datagram as recv() returned it."""
        out: list[bytes] = []
        view = ffi.from_buffer(datagram)
        offset = 0
        while True:
            status = lib.am_audit_nl_decode(
                self._parser.handle, view + offset, len(datagram) - offset, self._consumed,
                self._st,
            )
            offset += self._consumed[0]
            self._parser.take_all(out)
            if status != lib.AM_ERR_FULL:
                check(status, "am_audit_nl_decode")
                return out

    def flush(self) -> list[bytes]:
        return self._parser.flush()

    def stats(self) -> AuditNetlinkStats:
        """The netlink counters (the socket-only ones stay 0) and the parser's."""
        return AuditNetlinkStats(
            **{name: int(getattr(self._st, name)) for name in _NL_STATS},
            parser=self._parser.stats(),
        )


__all__ = [
    "NetlinkDecoder",
    "AuditNetlink",
    "AuditNetlinkOptions",
    "AuditNetlinkStats",
    "KernelStatus",
    "MODE_MULTICAST",
    "MODE_OWNER",
    "MODE_UNAVAILABLE",
    "RULE_KEY",
]
