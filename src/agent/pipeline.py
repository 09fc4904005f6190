"""The agent's one loop: collectors' sources and timers in, batches out to the outbox, the
outbox out to the uplink; twin patches and signals applied between two turns.

The loop owns the epoll, the timers and the order of work in a turn; its parts live in
agent.runtime: the priority lanes (lanes: one sink per message frequency, closed at the
lane's interval, batches sealed in their envelope by the outbox), live configuration and the
collectors' lifecycle (reconfigure: a patch touches only what it changed and takes effect at
the next turn of the loop, which waits at most 1 s), the drop ledger (drops: the increase
since last seen, computed once for the envelope, the Statistics event and the reported
properties), the status file (status) and the reported properties (reported).

The loop also tells the service manager how it is (agent.service): ready after its first
turn, a watchdog ping at the pace asked for, a status line with the status file, stopping at
shutdown.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from agent.clock import CLOCK, wall_time
from agent.collectors.base import Collector, Environment, now_ms
from agent.config import CollectorState, Config, ConfigStore, ConfigUpdate, Frequency
from agent.envelope import Identity
from agent.native.aggregate import Aggregator
from agent.outbox import Outbox
from agent.runtime.checkpoint import Checkpoints
from agent.runtime.drops import DropTotals
from agent.runtime.lanes import LANE_MAX_BATCHES, PriorityLane, lane_batch_bytes, lane_interval_s
from agent.runtime.reconfigure import Reconfiguration, Running, frequency_of, guard
from agent.runtime.reported import reported_document
from agent.runtime.status import StatusWriter
from agent.service import Notifier, status_line, status_path

__all__ = ["LANE_MAX_BATCHES", "STATUS_EVERY_S", "Agent", "PriorityLane", "Running", "Uplink",
           "install_signal_handlers", "lane_batch_bytes"]

log = logging.getLogger("agent")

TICK_S = 1.0
# After a busy wake-up the loop lets the sockets gather datagrams this long before it drains
# them again, rather than wake for each one: the bound the sources' documents state (a short-
# lived process's /proc entry for the proc connector, the actor's window for inotify).
GATHER_S = 0.05
# A source's callback may return how many seconds its socket can gather instead: the audit
# socket, whose records carry everything (agent.collectors.audit_source), up to GATHER_CHECK_S,
# and up to GATHER_MAX_S when it also says how to tell that its socket fills (watch's
# `filling`), asked every GATHER_CHECK_S of the wait: a burst that starts in a long gather is
# then drained as soon as it would have been with GATHER_CHECK_S gathers. Every turn has a fixed
# cost (the select, the timers' checks, the lanes, the uplink), about 0.2 ms: at 100 execs or
# connections per second the turns, not the events, were most of the agent's CPU; a check costs
# a tenth of a turn. A record waits in its socket at most GATHER_MAX_S (plus the turn's work).
GATHER_CHECK_S = 0.25
GATHER_MAX_S = 1.0
# The status file and the drop ledger's reading of every source's counters: each costs about
# a millisecond of Python, and every second they were most of an idle agent's CPU. A drop is
# still counted in the envelope of the lane that closes next (close_lane reads them first).
STATUS_EVERY_S = 5.0


class Uplink(Protocol):
    """Takes batches from the outbox and confirms each one delivered (agent.uplink)."""

    def describe(self) -> str: ...

    def pump(self, outbox: Outbox) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Agent:
    """`micro-agent run`: the collectors, the lanes, the outbox and the uplink in one loop."""

    def __init__(
        self,
        store: ConfigStore,
        env: Environment,
        outbox: Outbox,
        uplink: Uplink,
        ident: Identity,
        collectors: Iterable[Collector],
        *,
        notifier: Notifier | None = None,
        status_file: Path | None = None,
    ) -> None:
        self.store = store
        self.env = env
        self.outbox = outbox
        self.uplink = uplink
        self.ident = ident
        self.config: Config = store.config
        self.started = wall_time()
        self.collectors = {c.name: Running(c) for c in collectors}
        batch_bytes = lane_batch_bytes(self.config, ident)
        self.lanes = {f: PriorityLane(f, outbox, ident, batch_bytes,
                                      lane_interval_s(self.config, f)) for f in Frequency}
        self.drops = DropTotals(outbox)
        self.checkpoints = Checkpoints(env.data_dir, outbox, self._lane_aggregators)
        self.reconfiguration = Reconfiguration(self.collectors, self.lanes, outbox, ident,
                                               self.drops, lambda: store.invalid_reasons)
        # The service manager's notifications (none by default) and where status.json goes
        # (the data directory by default; the runtime directory under systemd).
        self.notifier = notifier if notifier is not None else Notifier()
        self.status_file = StatusWriter(status_file or status_path(env.data_dir, None),
                                        self.started)
        # The watched descriptors and the wake socket (calls from other threads, signals). While
        # some sources gather, they are muted (events 0) and the rest still wake the loop.
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        self._gathering: list[int] = []  # the descriptors whose gather it is
        # Appended by other threads and signal handlers, taken by the loop: deque's append and
        # popleft are atomic (the queue module and heapq would be 0.14 MB of RSS for this).
        self._calls: deque[Callable[[], None]] = deque()
        self._stop = False
        self._reload = False
        self._watched: dict[int, Callable[[], object]] = {}
        self._filling: dict[int, Callable[[], bool]] = {}
        # The `filling` checks of the sources whose gather runs past GATHER_CHECK_S now.
        self._gather_checks: list[Callable[[], bool]] = []
        env.watch = self._watch
        env.unwatch = self._unwatch
        self._last_status = 0.0
        self._next_housekeeping = 0.0
        self._coalesce_until = 0.0
        env.shared["statistics"] = self.statistics

    @property
    def dropped(self) -> dict[str, int]:
        """Every drop counted so far, by reason (the reported properties' counters)."""
        return self.drops.totals()

    # -- control from signal handlers and other threads ---------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Runs fn in the loop's thread at its next turn (the uplink's twin handler uses it)."""
        self._calls.append(fn)
        self._wake()

    def request_stop(self) -> None:
        self._stop = True
        self._wake()

    def request_reload(self) -> None:
        self._reload = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the buffer is full: the loop is awake already

    # -- configuration --------------------------------------------------------------------------

    def apply(self, update: ConfigUpdate) -> None:
        """A validated change: touch only what it changed (agent.runtime.reconfigure)."""
        self.config = update.new
        self.reconfiguration.apply(update, time.monotonic())
        self.set_checkpointing()

    def _watch(self, fd: int, callback: Callable[[], object],
               filling: Callable[[], bool] | None = None) -> None:
        if fd not in self._watched:
            self._epoll.register(fd, select.EPOLLIN)
        self._watched[fd] = callback
        if filling is None:
            self._filling.pop(fd, None)
        else:
            self._filling[fd] = filling

    def _unwatch(self, fd: int) -> None:
        self._filling.pop(fd, None)
        if self._watched.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self.reconfiguration.start(self.config, time.monotonic())
        self.restore_checkpoints()

    # -- checkpoints ------------------------------------------------------------------------------

    def _lane_aggregators(self, lane: str) -> dict[str, Aggregator | None]:
        return {name: self.collectors[name].collector.aggregator
                for name in self.lanes[Frequency(lane)].collectors}

    def restore_checkpoints(self) -> None:
        """Start: what the lanes held when the last run ended without flushing comes back
        (the previous run's checkpoints, even when they are off now)."""
        running: dict[str, tuple[Aggregator, str]] = {}
        for name, r in self.collectors.items():
            agg = r.collector.aggregator
            if r.lane is not None and agg is not None:
                running[name] = (agg, r.lane.name)
        try:
            self.checkpoints.restore({lane.name: lane for lane in self.lanes.values()}, running)
        except Exception:
            # A bug, not a bad file (those are set aside): the agent runs on without them.
            self.checkpoints.counters.corrupt += 1
            log.exception("checkpoint: restoring failed")
        self.set_checkpointing()

    def set_checkpointing(self) -> None:
        """Outbox_CheckpointSeconds, live: 0 removes the files (they would restore a state
        that moved on) and stops the write-ahead of spills."""
        on = self.config.outbox.checkpoint_seconds > 0
        for lane in self.lanes.values():
            lane.write_ahead = self.checkpoints.write if on else None
            if not on:
                lane.spill_held()  # nothing holds them back any more
        if not on:
            self.checkpoints.remove_all()

    def checkpoint(self, now: float) -> None:
        period = self.config.outbox.checkpoint_seconds
        if period <= 0:
            return
        for lane in self.lanes.values():
            self.checkpoints.due(lane, now, float(period))

    def run(self) -> int:
        self.start()
        try:
            # Ready once every collector was started and the loop has turned once.
            self.turn()
            self.notifier.ready()
            while not self._stop:
                self.turn()
        finally:
            self.shutdown()
        return 0

    def turn(self, timeout: float = TICK_S) -> None:
        """One turn: wait for a source (or a timer, a signal, a call from another thread),
        drain what is readable, run the timers that are due, store full batches, feed the
        uplink. Each collector's timer runs at its own pace (a second; polling: the polling
        interval), the drop accounting and the status file once a second: at a high event
        rate a turn follows every wake-up, and it must stay cheap."""
        now = time.monotonic()
        if now < self._coalesce_until:
            self._gather(now)
            now = time.monotonic()
        next_due = min(self._next_housekeeping, self.notifier.watchdog_due,
                       *(lane.deadline for lane in self.lanes.values()),
                       *(r.next_tick for r in self.collectors.values() if r.lane is not None))
        wait = max(0.0, min(timeout, next_due - now))
        gather = 0.0
        checks: list[Callable[[], bool]] = []
        gathering: list[int] = []
        wake = self._wake_r.fileno()
        for fd, _ in self._epoll.poll(wait):
            if fd == wake:
                self._drain_wake()
                continue
            callback = self._watched.get(fd)
            if callback is None:
                continue  # unwatched by an earlier callback of this turn
            try:
                may_wait = callback()
            except Exception:
                log.exception("reading fd %d failed", fd)
                may_wait = None
            wait_s = GATHER_S
            if isinstance(may_wait, float):
                gathering.append(fd)
                filling = self._filling.get(fd)
                longest = GATHER_CHECK_S if filling is None else GATHER_MAX_S
                wait_s = max(GATHER_S, min(longest, may_wait))
                if filling is not None and wait_s > GATHER_CHECK_S:
                    checks.append(filling)
            gather = min(gather, wait_s) if gather else wait_s
        if gather:
            self._coalesce_until = time.monotonic() + gather
            self._gather_checks = checks if gather > GATHER_CHECK_S else []
            self._gathering = gathering
        self._run_calls()
        if self._reload:
            self._reload = False
            log.info("config: rereading %s", self.store.path)
            self.apply(self.store.reload_file())
        now = time.monotonic()
        now_mono_ms = int(now * 1000)
        for running in self.collectors.values():
            lane = running.lane
            if lane is not None and now >= running.next_tick:
                c = running.collector
                running.next_tick = now + c.tick_interval()
                guard(c, "tick", partial(c.tick, now_mono_ms, lane))
        for lane in self.lanes.values():
            if now >= lane.deadline:
                self.close_lane(lane)
                lane.start_interval(now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + TICK_S
            for lane in self.lanes.values():
                lane.spill_held()  # the second's full batches: one write-ahead per lane
            self.checkpoint(now)
            if now - self._last_status >= STATUS_EVERY_S:
                self._last_status = now
                self.account_drops()
                self.write_status()
        for lane in self.lanes.values():
            lane.store_full()
        self.uplink.pump(self.outbox)
        self.notifier.keepalive(time.monotonic())

    def _gather(self, now: float) -> None:
        """The sources that said how long their sockets may gather were busy a moment ago: let
        them gather more datagrams (the kernel buffers hold megabytes) rather than wake for each
        one, until _coalesce_until. Any other source that becomes readable ends the wait (its
        own bound: a short-lived process's /proc entry, the actor's window of an inotify event),
        as do a call from another thread (the uplink's worker), a signal, and a gathering
        source whose socket fills (asked every GATHER_CHECK_S of a longer gather)."""
        muted = [fd for fd in self._gathering if fd in self._watched]
        for fd in muted:
            self._epoll.modify(fd, 0)
        try:
            while True:
                if self._epoll.poll(min(GATHER_CHECK_S, self._coalesce_until - now)):
                    return
                now = time.monotonic()
                if now >= self._coalesce_until:
                    return
                for filling in self._gather_checks:
                    if filling():
                        self._coalesce_until = now
                        return
        finally:
            for fd in muted:
                self._epoll.modify(fd, select.EPOLLIN)

    def close_lane(self, lane: PriorityLane) -> None:
        self.account_drops()  # the drops counted so far go into this lane's envelope
        wall = now_ms()
        for name in list(lane.collectors):
            c = self.collectors[name].collector
            guard(c, "collect", partial(c.collect, wall, lane))
        lane.close_interval()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.popleft()
            except IndexError:
                return
            try:
                fn()
            except Exception:
                log.exception("a call from another thread failed")

    def account_drops(self) -> None:
        """Every source of drops hands its running totals to the one ledger."""
        for name, running in self.collectors.items():
            self.drops.observe(name, running.collector.drops())
        for source_name, source in self.env.sources.items():
            self.drops.observe(source_name, source.drops())
        for lane in self.lanes.values():
            self.drops.observe(lane.prio.value, lane.drops())

    def shutdown(self) -> None:
        """SIGTERM or the end: every collector's entries are stored, every lane sealed, the
        sources closed (the audit rules removed), the uplink given a last turn."""
        log.info("stopping: flushing collectors and lanes")
        self.notifier.stopping()
        # Shared sources first: closing them reads what is left and hands it to their
        # subscribers (and removes the audit rules); then each collector stops and flushes.
        for source_name, source in self.env.sources.items():
            try:
                source.close()
            except Exception:
                log.exception("%s: close failed", source_name)
        for name in self.collectors:
            self.reconfiguration.stop(name, final=True)
        self.account_drops()
        for lane in self.lanes.values():
            lane.close_interval()
        # Everything the lanes held is in the outbox now.
        self.checkpoints.remove_all()
        try:
            self.uplink.pump(self.outbox)
        finally:
            self.uplink.close()
            self.write_status(stopped=True)
            self.outbox.close()
            self._epoll.close()
            self._wake_r.close()
            self._wake_w.close()
            self.notifier.close()

    # -- status -----------------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Counters per collector, the lanes', the outbox's and the drops by reason (the
        Statistics event)."""
        return {
            "coll": {name: r.collector.stats() for name, r in self.collectors.items()},
            "lanes": {lane.prio.value: {"stored": lane.stored, "not_stored": lane.not_stored}
                      for lane in self.lanes.values()},
            "outbox": dict(vars(self.outbox.counters())),
            "dropped": self.drops.totals(),
            "checkpoint": self.checkpoints.stats(),
        }

    def collector_states(self) -> dict[str, CollectorState]:
        return {name: r.collector.state for name, r in self.collectors.items()}

    def reported_document(self, stats: Mapping[str, Mapping[str, Any]] | None = None
                          ) -> dict[str, Any]:
        """The module twin's reported properties (agent.runtime.reported); `stats`: the
        collectors' stats() when read already."""
        return reported_document(self.config, self.store.invalid_reasons,
                                 {name: r.collector for name, r in self.collectors.items()},
                                 self.drops.totals(), self.outbox, self.fault_counters(),
                                 stats)

    def fault_counters(self) -> dict[str, dict[str, int]]:
        """What the faults the agent lives through leave behind, for the reported properties
        and status.json: the wall clock's jumps (agent.clock) and, with the IoT Hub uplink,
        how often the link failed (refused credentials, TLS) or was lost."""
        groups: dict[str, dict[str, int]] = {"clock": CLOCK.counts()}
        changes = self.uplink.status().get("state_changes")
        if isinstance(changes, dict):
            groups["uplink"] = {state: int(n) for state, n in changes.items()
                                if state in ("failed", "disconnected")}
        return groups

    def write_status(self, stopped: bool = False) -> None:
        # Each collector's counters, read once for the document and its reported properties.
        stats = {name: r.collector.stats() for name, r in self.collectors.items()}
        doc = self.status_file.document(
            now=wall_time(),
            running=not stopped,
            config_state={"latest_state": self.store.latest_state,
                          "latest_invalid_fields": list(self.store.latest_invalid_fields)},
            uplink=self.uplink.status(),
            collectors={name: r.collector for name, r in self.collectors.items()},
            frequencies={name: frequency_of(self.config, name) for name in self.collectors},
            outbox=self.outbox,
            reported=self.reported_document(stats),
            stats=stats,
        )
        doc["checkpoint"] = self.checkpoints.stats()
        doc["clock"] = CLOCK.stats()
        self.status_file.write(doc, final=stopped)
        if not stopped:
            self.notifier.status(status_line(doc))


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM and SIGINT stop the agent cleanly; SIGHUP rereads the local configuration."""
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
