"""The live audit source (native/audit_netlink.c): kernel audit records over NETLINK_AUDIT,
assembled and encoded by the core's audit parser into the EventSink given to each call, like
every other source (the drain contract: a call returns `more`; native.pump drives it).

    with AuditNetlink() as audit:
        print(audit.state)                    # "owner", "multicast: owned by pid 812 (auditd)"
        selector.register(audit.fileno(), EVENT_READ)
        ...
        pump(audit.drain, sink, deliver)      # on readable
        pump(lambda s: audit.expire(s, now_ms), sink, deliver, seal=True)  # every second
        pump(audit.finish, sink, deliver)     # the last events; rules removed, kernel restored
    # leaving the block (or close(), or garbage collection) frees the handle; if finish() was
    # not called, the C destructor still removes the rules and restores the kernel state

Python sees only batches (bytes of one msgpack array of event maps, docs/events.md) and
counters; records never become Python objects (see docs/sources/audit-netlink.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agent._core import ffi, lib
from agent.native import AuditOptions, AuditParser, _base
from agent.native._base import (
    CoreArgumentError,
    CoreStats,
    NativeHandle,
    c_options,
    check,
    more,
)
from agent.native.sink import EventSink
from agent.record import field, record

MODE_UNAVAILABLE = "unavailable"
MODE_OWNER = "owner"
MODE_MULTICAST = "multicast"
_MODES = {
    lib.AM_ANL_UNAVAILABLE: MODE_UNAVAILABLE,
    lib.AM_ANL_OWNER: MODE_OWNER,
    lib.AM_ANL_MULTICAST: MODE_MULTICAST,
}

RULE_KEY = "iot-micro-agent"


@record(frozen=True)
class AuditNetlinkOptions:
    """What the source may do; see native/core_audit_netlink.h. None keeps the default."""

    take_ownership: bool | None = None  # become the audit daemon when none is alive (True)
    backlog_limit: int | None = None  # as owner, raise backlog_limit to this (8192)
    exec_rules: bool | None = None  # execve/execveat rules (True)
    net_rules: bool | None = None  # connect/accept/accept4/bind rules (True)
    compat_arch: bool | None = None  # also the 32-bit compat arch (True)
    rcvbuf_bytes: int | None = None  # event socket buffer (4 MiB)
    reply_timeout_ms: int | None = None  # per kernel reply (2000)
    drop_when_full: bool | None = None  # as owner, backlog_wait_time 0 (True; not if failure=2)
    # As owner with no other multicast reader, exclude the record types no event reads (EOE:
    # PROCTITLE ends a syscall's event; BPRM_FCAPS) kernel-side: fewer datagrams (True).
    exclude_unread: bool | None = None
    # As exclude_unread, and while no watch rule is installed, PATH records too: exec events
    # then have no `paths` (True).
    exclude_path: bool | None = None
    # With exclude_unread's exclusion and while no watch rule is installed, PROCTITLE too:
    # events complete at the second drain end after their last record, and exec events without
    # EXECVE take `title` from the parser's title cache (True).
    exclude_proctitle: bool | None = None
    parser: AuditOptions | None = field(default=None, metadata=_base.C_ONLY_IN_PYTHON)
    # Watch rules (perm wa) for these absolute paths: the FileSystem collector's actors.
    watch_paths: tuple[str, ...] = field(default=(), metadata=_base.C_ONLY_IN_PYTHON)


class AuditNetlinkStats(CoreStats):
    """The netlink side's counters (struct am_anl_stats, every field by its C name) and, as
    `parser`, its parser's (struct am_audit_stats)."""

    __slots__ = ("parser",)
    parser: CoreStats

    def __init__(self, values: Mapping[str, int], parser: CoreStats) -> None:
        super().__init__("struct am_anl_stats", values)
        self.parser = parser

    @property
    def loss(self) -> int:
        """Everything known lost: kernel `lost` growth (records), ENOBUFS (overflows, each
        any number of records), serial gaps (events) and the times the kernel dropped us as
        its audit daemon (each any number of records)."""
        return self.kernel_lost_delta + self.enobufs + self.parser.gaps + self.ownership_lost


def _netlink_counters(handle: object, out: object) -> None:
    lib.am_anl_stats(handle, out, ffi.NULL)


class AuditNetlink(NativeHandle):
    """The kernel audit stream as batches. Opening reads the audit status and chooses a mode:
    `owner` (no live audit daemon: this process becomes it, enables audit and raises the
    backlog), `multicast` (auditd or another process owns audit: read AUDIT_NLGRP_READLOG,
    change nothing of theirs) or `unavailable` (with the reason in `state`).

    The handle's C destructor (am_anl_free, run by close() or at garbage collection, also at
    interpreter exit) removes the agent's rules and restores what open changed.

    `before_change(found)`, when given, is called with the kernel's audit status after it was
    read and before anything in the kernel is changed (the agent records it durably there, so
    that a killed run can be undone: agent.collectors.audit_state); if it raises, nothing is
    changed and the error propagates."""

    _what = "audit netlink source"

    def __init__(self, options: AuditNetlinkOptions | None = None,
                 before_change: Callable[[CoreStats], None] | None = None) -> None:
        options = options or AuditNetlinkOptions()
        opts = c_options(options, "struct am_anl_options", lib.am_anl_default_options)
        parser = ffi.NULL
        if options.parser is not None:
            parser = c_options(options.parser, "struct am_audit_options",
                               lib.am_audit_default_options)
        handle = lib.am_anl_new(opts, parser)
        self._own(handle, lib.am_anl_free, options)
        self._finished_reading = False
        self._status = ffi.new("struct am_anl_status *")
        try:
            if options.watch_paths:
                self.watch(options.watch_paths)
            if before_change is not None and lib.am_anl_probe(handle) == _base.AM_OK:
                found = self.found_status
                assert found is not None
                before_change(found)
            check(lib.am_anl_open(handle), "am_anl_open")
        except BaseException:
            self.close()
            raise

    def watch(self, paths: tuple[str, ...]) -> None:
        """The watch rules' paths: installed at open, or at once on an opened source (the
        rules of paths no longer given are removed)."""
        text = ",".join(paths).encode(errors="surrogateescape")
        check(lib.am_anl_watch(self._live(), text, len(text)), "am_anl_watch")

    # -- properties

    @property
    def mode(self) -> str:
        """`owner`, `multicast` or `unavailable`."""
        return _MODES[lib.am_anl_mode(self._live())]

    @property
    def state(self) -> str:
        """One line for the agent's reported properties: the mode and why."""
        return str(ffi.string(lib.am_anl_state(self._live())).decode("utf-8", "replace"))

    @property
    def rules_report(self) -> str:
        """What the rules step did: installed, skipped syscalls, refusals, stale rules."""
        return str(ffi.string(lib.am_anl_rules_report(self._live())).decode("utf-8", "replace"))

    @property
    def found_status(self) -> CoreStats | None:
        """The kernel's audit status when this source opened (what close() restores)."""
        if lib.am_anl_found_status(self._live(), self._status) != _base.AM_OK:
            return None
        return CoreStats.read("struct am_anl_status", self._status)

    def fileno(self) -> int:
        """The event socket, non-blocking, for selectors (-1 after finish())."""
        return int(lib.am_anl_fileno(self._live()))

    # -- the stream: the drain contract (native.pump)

    def drain(self, sink: EventSink) -> bool:
        """Reads everything readable into events in the sink; True (more): the sink is full,
        take its batches and call again."""
        return more(lib.am_anl_drain(self._live(), sink.handle, 0), "am_anl_drain")

    def expire(self, sink: EventSink, now_ms: int) -> bool:
        """Completes events idle for the parser's timeout_ms of wall time (ms since epoch);
        more as drain(). With PROCTITLE excluded (proctitle_excluded) it drains instead: the
        drain's end completes what the last drains left open (there are no timeouts then)."""
        if now_ms < 0:
            raise CoreArgumentError("now_ms must be >= 0")
        return more(lib.am_anl_expire(self._live(), sink.handle, now_ms), "am_anl_expire")

    def finish(self, sink: EventSink) -> bool:
        """Reads what is left, removes the agent's rules, restores what open changed in the
        kernel, completes every open event and seals the sink's open batch; more as drain().
        The counters stay readable until close()."""
        handle = self._live()
        if not self._finished_reading:
            try:
                pending = more(lib.am_anl_drain(handle, sink.handle, 0), "am_anl_drain")
            except BaseException:
                lib.am_anl_close(handle)
                raise
            if pending:
                return True
            check(lib.am_anl_close(handle), "am_anl_close")
            self._finished_reading = True
        return more(lib.am_anl_flush(handle, sink.handle), "am_anl_flush")

    def poll_status(self) -> CoreStats | None:
        """AUDIT_GET now (call it every second or so): keeps kernel_lost_delta current,
        notices a lost ownership, and as owner puts back rules of ours that another process
        deleted and audit that it disabled (rules_lost, disabled_by_others). None when the kernel did not answer (counted)."""
        if lib.am_anl_poll_status(self._live(), self._status) != _base.AM_OK:
            return None
        return CoreStats.read("struct am_anl_status", self._status)

    def counters(self, *names: str) -> tuple[int, ...]:
        """Only the named fields of the netlink counters (not the parser's), read without
        copying the others: for the checks run every second."""
        return self._read_fields("struct am_anl_stats", _netlink_counters, names)

    def stats(self) -> AuditNetlinkStats:
        parser = self._read_stats("struct am_audit_stats",
                                  lambda h, out: lib.am_anl_stats(h, ffi.NULL, out))
        raw = self._fill_stats("struct am_anl_stats", _netlink_counters)
        return AuditNetlinkStats(_base.stats_values("struct am_anl_stats", raw), parser)


@record(frozen=True)
class RestoreResult:
    """What restore_status did: `complete` when no rule with our key is left and every
    restored field equals the saved one; `answered` False when the kernel did not answer;
    `report` the counters of struct am_anl_restore_report."""

    complete: bool
    answered: bool
    report: CoreStats

    def describe(self) -> str:
        r = self.report
        if not self.answered:
            return "the kernel did not answer (no audit, or no CAP_AUDIT_CONTROL)"
        parts = [f"{r.rules_removed} rule(s) with our key removed"]
        if r.rules_remove_failed:
            parts.append(f"{r.rules_remove_failed} refused")
        if r.settings_skipped:
            parts.append("settings left to the live audit daemon")
        else:
            parts.append(f"{r.settings_changed} setting(s) put back")
        if r.settings_failed:
            parts.append(f"{r.settings_failed} refused")
        if r.ownership_released:
            parts.append("ownership released")
        if r.mismatched:
            parts.append(f"{r.mismatched} field(s) still differ")
        if r.rules_left:
            parts.append(f"{r.rules_left} rule(s) with our key left")
        return ", ".join(parts)


STATUS_FIELDS = ("enabled", "failure", "pid", "rate_limit", "backlog_limit",
                 "backlog_wait_time")


def restore_status(saved: Mapping[str, int], reply_timeout_ms: int | None = None
                   ) -> RestoreResult:
    """Puts the kernel's audit state back to `saved` (a found_status recorded before a run,
    by field name): am_anl_restore on a handle of its own, never opened. Idempotent."""
    opts = c_options(AuditNetlinkOptions(exec_rules=False, net_rules=False,
                                         reply_timeout_ms=reply_timeout_ms),
                     "struct am_anl_options", lib.am_anl_default_options)
    handle = lib.am_anl_new(opts, ffi.NULL)
    if handle == ffi.NULL:
        raise MemoryError("am_anl_new")
    try:
        status = ffi.new("struct am_anl_status *")
        for name in STATUS_FIELDS:
            setattr(status, name, int(saved[name]))
        report = ffi.new("struct am_anl_restore_report *")
        rc = lib.am_anl_restore(handle, status, report)
    finally:
        lib.am_anl_free(handle)
    if rc not in (_base.AM_OK, _base.AM_EMPTY, lib.AM_ERR_LIMIT):
        check(rc, "am_anl_restore")
    return RestoreResult(rc == _base.AM_OK, rc != _base.AM_EMPTY,
                         CoreStats.read("struct am_anl_restore_report", report))


class NetlinkDecoder(NativeHandle):
    """The decoder of received audit netlink datagrams without a socket (am_audit_nl_decode
    over a parser of its own, whose handle this one is): for tests, replays and fuzz-found
    inputs."""

    _what = "audit netlink decoder"

    def __init__(self, options: AuditOptions | None = None) -> None:
        self._parser = AuditParser(options)
        self._h = self._parser.handle
        self._st = ffi.new("struct am_anl_stats *")

    def close(self) -> None:
        self._h = None
        self._parser.close()

    def feed(self, datagram: bytes) -> list[bytes]:
        """One datagram as recv() returned it."""
        handle, st = self._live(), self._st
        return self._parser.consume(
            datagram,
            lambda sink, data, n, used: lib.am_audit_nl_decode(handle, sink, data, n, used, st),
            "am_audit_nl_decode")

    def unmarked(self, on: bool = True) -> None:
        """The parser's unmarked mode (am_audit_nl_unmarked), as the live source's when it
        excluded PROCTITLE: events complete at drain ends, titles come from its title cache."""
        check(lib.am_audit_nl_unmarked(self._live(), int(on)), "am_audit_nl_unmarked")

    def drain_end(self, now_ms: int) -> list[bytes]:
        """The socket said EAGAIN at now_ms (monotonic ms): the events it completes, in the
        batches it filled and the sealed open one."""
        handle, st = self._live(), self._st
        if now_ms < 0:
            raise CoreArgumentError("now_ms must be >= 0")
        done = self._parser.run(lambda sink: more(
            lib.am_audit_nl_drain_end(handle, sink.handle, now_ms, st), "am_audit_nl_drain_end"))
        return done + self._parser.seal()

    def flush(self) -> list[bytes]:
        self._live()
        return self._parser.flush()

    def stats(self) -> AuditNetlinkStats:
        """The netlink counters (the socket-only ones stay 0) and the parser's."""
        handle = self._live()
        # Decoding nothing copies the parser's unmarked-mode counters (titles found by a
        # flush's events among them) into the netlink ones.
        check(lib.am_audit_nl_decode(handle, ffi.NULL, ffi.NULL, 0, self._parser._consumed,
                                     self._st), "am_audit_nl_decode")
        return AuditNetlinkStats(_base.stats_values("struct am_anl_stats", self._st),
                                 self._parser.stats())


__all__ = [
    "MODE_MULTICAST",
    "MODE_OWNER",
    "MODE_UNAVAILABLE",
    "RULE_KEY",
    "AuditNetlink",
    "AuditNetlinkOptions",
    "AuditNetlinkStats",
    "NetlinkDecoder",
    "RestoreResult",
    "restore_status",
]
