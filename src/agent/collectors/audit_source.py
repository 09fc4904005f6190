"""The kernel audit socket, shared: Process (exec), NetworkActivity (connect, accept, bind)
and Login (PAM's USER_* records) each subscribe, and every batch the socket yields goes to each
subscriber's aggregator, which keeps the event types of its collector.

The socket is opened with the rules the subscribers need (exec rules for Process, network
rules for NetworkActivity; Login needs none: PAM's records come without rules) and opened
again when that set changes. Its mode (owner of audit, or reader of the multicast group
beside auditd) is the subscribers' reported source. Its losses (the kernel's `lost`, ENOBUFS,
serial gaps) are reported once, as the "Audit" source's drops.

Before each open changes the kernel, the status it found is recorded in the data directory
(agent.collectors.audit_state); a record left by a killed run is put back first, and each
close puts the recorded state back and removes the record.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from agent.clock import kernel_ms
from agent.collectors.audit_state import AuditStateRecord, RecordError
from agent.collectors.privileges import lacking
from agent.native.audit_netlink import AuditNetlink, AuditNetlinkOptions
from agent.native.sink import EventSink, SinkOptions, pump

if TYPE_CHECKING:
    from agent.collectors.base import Collector, Environment
    from agent.config import Config

log = logging.getLogger("agent.audit")

SOURCE_NAME = "Audit"
# The event socket's receive buffer the core asks for (AuditNetlinkOptions.rcvbuf_bytes).
RCVBUF_BYTES = 4 << 20
RMEM_MAX = "/proc/sys/net/core/rmem_max"
# How long the event socket may gather before the next drain (what on_readable returns to the
# loop, agent.pipeline): until a quarter of its receive buffer would be full at the rate of the
# last drain. An exec costs about 7.2 KB of the buffer as the kernel counts it (seven records of
# some 1 KiB each, measured with every record type; with the owner's exclusions it is four, so
# the gather is shorter than it could be, never longer): the 4 MiB asked for (8 MiB counted)
# hold about 1,150 execs, a quarter of them 0.18 s at 1,600 execs per second. A buffer capped by net.core.rmem_max is
# smaller (SO_RCVBUF says what the kernel counts), and so is the time.
BUFFER_SHARE = 4
EXEC_BUFFER_BYTES = 7200
# The kernel's audit status (AUDIT_GET: its `lost` counter, the audit daemon's pid, whether
# audit is on) is asked every second while the socket could fill within STATUS_POLL_MS at the
# rate of its busiest drain (a reader whose socket stays full loses its ownership: the sooner
# the poll sees that, the fewer records go unseen), at the first tick after a CONFIG_CHANGE
# record (another process changed the rules or the settings: they are put back at once), after
# a tick that came late (the agent was stopped or starved), when the socket closes, and every
# STATUS_POLL_MS otherwise. Each AUDIT_GET costs the agent a round trip and the kernel a thread
# (its reply is sent from a kthread of its own): idle, every second was one of each per second.
STATUS_POLL_MS = 5000
LATE_TICK_MS = 2000
# The batches of the socket's events: below the heap's mmap threshold (128 KiB, fixed at start by
# agent.native.heap), so that each batch, in the core and as the bytes Python takes, reuses heap
# memory; the sink's default (240 KiB) was mapped, faulted in page by page and unmapped again
# for every batch, a tenth of the agent's CPU under an exec storm (docs/performance.md).
RAW_BATCH_BYTES = 64 << 10


def _explained(state: str) -> str:
    """The source's state with the capability that is missing for what it could not do:
    AUDIT_GET (every mode) needs CAP_AUDIT_CONTROL, the multicast group CAP_AUDIT_READ (the
    core's message names it), and without CAP_NET_ADMIN (SO_RCVBUFFORCE) the event buffer is
    capped by net.core.rmem_max, so bursts overflow it sooner."""
    if state.startswith("unavailable") and "AUDIT_GET" in state and lacking("CAP_AUDIT_CONTROL"):
        return f"{state} (no CAP_AUDIT_CONTROL)"
    if state.startswith("unavailable") or not lacking("CAP_NET_ADMIN"):
        return state
    try:
        with open(RMEM_MAX, encoding="ascii") as f:
            rmem_max = int(f.read().strip())
    except (OSError, ValueError):
        return state
    if rmem_max >= RCVBUF_BYTES:
        return state
    return (f"{state}; event buffer capped at net.core.rmem_max ({rmem_max} bytes, not "
            f"{RCVBUF_BYTES}): no CAP_NET_ADMIN")


def events_buffered(sock: socket.socket) -> int:
    """About how many execs the event socket holds before it is full."""
    rcvbuf = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return max(1, rcvbuf // EXEC_BUFFER_BYTES)


# getsockopt(SO_MEMINFO): the socket's memory as the kernel counts it, u32s from
# SK_MEMINFO_RMEM_ALLOC (what its queue holds) and SK_MEMINFO_RCVBUF (the limit). Linux 4.6.
SO_MEMINFO = 55


def socket_memory(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes queued, receive buffer) as the kernel counts them, or None where SO_MEMINFO is
    refused."""
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 8)
    except OSError:
        return None
    return int.from_bytes(info[0:4], sys.byteorder), int.from_bytes(info[4:8], sys.byteorder)


def buffer_filling(sock: socket.socket) -> bool:
    """Whether the socket's queue holds a BUFFER_SHARE of its receive buffer: the loop then
    drains it before its gather ends (agent.pipeline)."""
    memory = socket_memory(sock)
    return memory is not None and memory[0] * BUFFER_SHARE >= memory[1]


class AuditSource:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.nl: AuditNetlink | None = None
        # The socket's events, before they go to each subscriber.
        self.raw = EventSink(SinkOptions(batch_bytes=RAW_BATCH_BYTES))
        self.subscribers: dict[str, tuple[Collector, bool, bool]] = {}
        # Watch rules' paths by subscriber (FileSystem): changed on the open socket, no reopen.
        self.watch_paths: dict[str, tuple[str, ...]] = {}
        self.state = "closed"
        self._config: Config | None = None
        self._opened_with: tuple[bool, bool, bool, int, int, bool] | None = None
        self.record = AuditStateRecord(env.data_dir)
        self._closed_drops: dict[str, int] = {}
        self._last_tick = -1000  # monotonic ms of the last tick
        self._closed = False  # the agent is stopping: no reopening
        # rules_lost, disabled_by_others of the open socket
        self._tampering_seen: tuple[int, ...] = (0, 0)
        self._capacity = 1  # execs the event socket holds (events_buffered)
        self._sock: socket.socket | None = None  # the event socket's duplicate, for its sizes
        self._last_drain = 0.0  # monotonic time of the last drain
        self._last_poll = -STATUS_POLL_MS  # monotonic ms of the last status poll
        self._changes_polled = 0  # CONFIG_CHANGE records read at the last poll
        self._may_fill = False  # a drain since the last poll: the socket could fill soon

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(self, collector: Collector, exec_rules: bool = False, net_rules: bool = False,
                  watch_paths: tuple[str, ...] = ()) -> bool:
        """Adds the collector; True when audit events will come (the state says why not).
        watch_paths: watch rules (perm wa) for these paths, keyed like the others."""
        if collector.config is not None:
            self._config = collector.config
        self._closed = False
        self.subscribers[collector.name] = (collector, exec_rules, net_rules)
        self.watch_paths[collector.name] = tuple(watch_paths)
        self._reopen()
        self._watch()
        return self.nl is not None

    def _watched(self) -> tuple[str, ...]:
        return tuple(sorted({p for paths in self.watch_paths.values() for p in paths}))

    def _watch(self) -> None:
        """The watch rules of every subscriber's paths on the open socket."""
        if self.nl is not None:
            try:
                self.nl.watch(self._watched())
            except Exception as err:  # noqa: BLE001 - the events then say so (no actor)
                log.warning("audit: watch rules: %s", err)

    def unsubscribe(self, collector: Collector) -> None:
        self.watch_paths.pop(collector.name, None)
        if self.subscribers.pop(collector.name, None) is None:
            return
        self._watch()
        # The leaving collector still gets what the socket holds for it.
        self._reopen(also=collector)

    def _wanted(self) -> tuple[bool, bool, bool, int, int, bool]:
        exec_rules = any(e for _, e, _ in self.subscribers.values())
        net_rules = any(n for _, _, n in self.subscribers.values())
        own, backlog, rcvbuf, exec_paths = True, 8192, 4 << 20, False
        if self._config is not None:
            own = self._config.audit.own_if_free
            backlog = self._config.audit.backlog_limit
            rcvbuf = self._config.audit.receive_buffer_bytes
            exec_paths = self._config.audit.exec_paths
        return exec_rules, net_rules, own, backlog, rcvbuf, exec_paths

    def _reopen(self, also: Collector | None = None) -> None:
        if self._closed:
            return
        wanted = self._wanted() if self.subscribers else None
        if wanted == self._opened_with and (self.nl is not None or wanted is None):
            return
        self._close(also)
        if wanted is None:
            return
        exec_rules, net_rules, own, backlog, rcvbuf, exec_paths = wanted
        try:
            # A record a killed run left is put back before anything changes again; one that
            # could not be put back stays, and describes the state before that run: it is not
            # replaced by what this open finds.
            keep_old = not self._restore_recorded()
            self.nl = AuditNetlink(
                AuditNetlinkOptions(take_ownership=own, backlog_limit=backlog,
                                    exec_rules=exec_rules, net_rules=net_rules,
                                    rcvbuf_bytes=rcvbuf, watch_paths=self._watched(),
                                    exclude_path=not exec_paths),
                before_change=None if keep_old else self.record.save)
            self._tampering_seen = (0, 0)  # a new socket's counters start at zero
        # No CAP_AUDIT_*, no audit in the kernel, or anything else: the collectors fall back.
        except Exception as err:  # noqa: BLE001
            self.state = _explained(f"unavailable: {type(err).__name__}: {err}")
            log.warning("audit: %s", self.state)
            self.nl = None
            self._opened_with = wanted
            return
        found = self.nl.found_status
        silent = self.nl.mode == "multicast" and found is not None and found.enabled == 0
        if self.nl.mode == "unavailable" or silent:
            # Multicast with audit disabled delivers nothing: no better than unavailable, and
            # the collectors must fall back to their next source.
            self.state = _explained(self.nl.state)
            log.warning("audit: %s", self.state)
            self._account_closed(self.nl)
            self.nl.close()
            self._restore_recorded()
            self.nl = None
            self._opened_with = wanted
            return
        self.state = _explained(self.nl.state)
        self._opened_with = wanted
        self.env.sources[SOURCE_NAME] = self
        self._sock = socket.socket(fileno=os.dup(self.nl.fileno()))
        self._capacity = events_buffered(self._sock)
        sock = self._sock
        self.env.watch(self.nl.fileno(), self.on_readable,
                       (lambda: buffer_filling(sock)) if socket_memory(sock) else None)
        log.info("audit: %s; %s", self.state, self.nl.rules_report)

    def _close(self, also: Collector | None = None) -> None:
        nl, self.nl = self.nl, None
        self._opened_with = None
        if nl is None:
            return
        self.env.unwatch(nl.fileno())
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            pump(nl.finish, self.raw, lambda batches: self._route(batches, also), seal=True)
            nl.poll_status()  # the kernel's `lost` up to now, into the counts
        finally:
            self._account_closed(nl)
            nl.close()
            self._restore_recorded()
        self.state = "closed"

    def _restore_recorded(self) -> bool:
        """Puts the recorded audit state back (a no-op when nothing is recorded); True when
        no record is left. An unreadable record is set aside (.corrupt), never trusted."""
        try:
            outcome = self.record.restore()
        except RecordError as err:
            log.error("audit: unreadable state record, set aside as .corrupt: %s", err)
            try:
                os.replace(self.record.path, self.record.path.with_suffix(".corrupt"))
            except OSError:
                return False
            return True
        except Exception as err:  # noqa: BLE001 - no audit in the kernel: nothing to restore
            log.error("audit: restoring the recorded state failed: %s", err)
            return False
        if outcome.what != "nothing recorded":
            (log.info if outcome.ok else log.error)("audit: %s", outcome.what)
        return outcome.ok

    def close(self) -> None:
        """The agent stops: the last events go to the subscribers, the rules are removed and
        the kernel's audit settings restored."""
        self._close()
        self._closed = True

    # -- events ----------------------------------------------------------------------------------

    def _route(self, batches: list[bytes], also: Collector | None = None) -> None:
        targets = [c for c, _, _ in self.subscribers.values()]
        if also is not None and also not in targets:
            targets.append(also)
        for batch in batches:
            for collector in targets:
                if collector.lane is not None:
                    collector.route(batch, collector.lane)

    def on_readable(self, seal: bool = False) -> float:
        """Reads what the socket holds; seal: the open batch goes to the subscribers now (the
        FileSystem collector's events wait for their actors in these records). Returns how
        long the socket may gather before the next drain (BUFFER_SHARE) at the rate of this
        one, for the loop (agent.pipeline)."""
        now = time.monotonic()
        since, self._last_drain = now - self._last_drain, now
        if self.nl is None:
            return math.inf
        events = pump(self.nl.drain, self.raw, self._route, seal=seal)
        if events == 0:
            return math.inf
        full_in_s = since * self._capacity / events  # the whole socket, at this drain's rate
        if full_in_s < STATUS_POLL_MS / 1000:
            self._may_fill = True
        return full_in_s / BUFFER_SHARE

    def tick(self, now: int) -> None:
        """Called by each subscriber's tick; runs at most once per second: completes idle
        events, seals the open batch (so that events reach the collectors within a second),
        polls the kernel's audit status when it is due (STATUS_POLL_MS)."""
        # `now` (monotonic) paces this; the records' age is measured on the clock the kernel
        # stamped them with, not the agent's wall clock: set forward, that would complete
        # events whose records are still coming.
        if self.nl is None or now - self._last_tick < 1000:
            return
        late = now - self._last_tick > LATE_TICK_MS
        self._last_tick = now
        nl = self.nl
        changes = nl.counters("config_changes")[0]
        if (late or self._may_fill or changes != self._changes_polled
                or now - self._last_poll >= STATUS_POLL_MS):
            self._last_poll, self._changes_polled, self._may_fill = now, changes, False
            nl.poll_status()
            self._report_tampering(nl)
        stamp = kernel_ms()
        pump(lambda sink: nl.expire(sink, stamp), self.raw, self._route, seal=True)

    def _report_tampering(self, nl: AuditNetlink) -> None:
        """Another process deleted our rules or turned audit off: the core has put them back
        (am_anl_poll_status); the events in between are lost, and how many cannot be known."""
        seen = nl.counters("rules_lost", "disabled_by_others")
        if seen != self._tampering_seen:
            lost, disabled = (now - before for now, before in zip(seen, self._tampering_seen))
            if lost:
                log.warning("audit: %d of our rule(s) were deleted by another process; added "
                            "again (%d in all); what ran meanwhile was not seen", lost, seen[0])
            if disabled:
                log.warning("audit: another process disabled audit; enabled again (%d time(s) "
                            "in all); what ran meanwhile was not seen", seen[1])
            self._tampering_seen = seen

    # -- loss -----------------------------------------------------------------------------------

    @staticmethod
    def _drops_of(nl: AuditNetlink) -> dict[str, int]:
        s = nl.stats()
        return {
            "kernel_lost": s.kernel_lost_delta,
            "enobufs": s.enobufs,
            "serial_gaps": s.parser.gaps,
            "ownership_lost": s.ownership_lost,
            "truncated_events": s.parser.truncated,
            "malformed": s.malformed + s.parser.malformed,
            # Incidents, not events: how many events ran unseen while a rule of ours was
            # gone or audit was off cannot be known (docs/sources/audit-netlink.md).
            "rules_deleted": s.rules_lost,
            "disabled_by_others": s.disabled_by_others,
            # Owner without PROCTITLE: records that came after their event was sent (its keys
            # from them are missing; docs/sources/audit-netlink.md, "unmarked mode").
            "late_records": s.late_records,
        }

    def _account_closed(self, nl: AuditNetlink) -> None:
        for reason, n in self._drops_of(nl).items():
            self._closed_drops[reason] = self._closed_drops.get(reason, 0) + n

    def drops(self) -> dict[str, int]:
        total = dict(self._closed_drops)
        if self.nl is not None:
            for reason, n in self._drops_of(self.nl).items():
                total[reason] = total.get(reason, 0) + n
        return total


def audit_source(env: Environment) -> AuditSource:
    """The agent's one audit source (made at first use)."""
    source = env.shared.get(SOURCE_NAME)
    if source is None:
        source = env.shared[SOURCE_NAME] = AuditSource(env)
    assert isinstance(source, AuditSource)
    return source
