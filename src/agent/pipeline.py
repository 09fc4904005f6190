"""The agent's one loop: collectors' sources and timers in, batches out to the outbox, the
outbox out to the uplink; twin patches and signals applied between two turns.

Lanes. Each message frequency (High, Medium, Low) is a lane: an event sink that every
collector of that frequency writes into (through its aggregator), closed at the lane's
interval (CollectorsCore_PriorityIntervals). A batch that fills up on the way is stored at
once; at the interval every collector of the lane flushes its aggregated entries (periodic
collectors take their snapshot first) and the lane's last batch is sealed and stored. A
stored batch carries its envelope (agent.envelope) with the drops counted since the previous
batch: the sources' losses, the lanes' and the outbox's own.

Live configuration. A patch (from the twin, or the local file on SIGHUP) is validated by
agent.config; the loop then touches only what changed: a collector whose section changed is
flushed into its old lane and reconfigured (restarted when it was running), a collector whose
`_Disabled` turned true is flushed and stopped. A patch takes effect at the next turn of the
loop, which waits at most 1 s.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from agent import __version__
from agent.collectors.base import Collector, Environment, now_ms
from agent.config import (
    COLLECTORS,
    CollectorState,
    Config,
    ConfigStore,
    ConfigUpdate,
    Frequency,
    build_reported,
)
from agent.envelope import Identity, batch_bytes_for, envelope_overhead, event_count, sealer
from agent.native.sink import EventSink, SinkOptions
from agent.outbox import Outbox

log = logging.getLogger("agent")

TICK_S = 1.0
# After a busy wake-up the loop waits this long before the next one (at most this much latency).
COALESCE_S = 0.05
STATUS_EVERY_S = 2.0
LANE_MAX_BATCHES = 4


class Uplink(Protocol):
    """Takes batches from the outbox and confirms each one delivered (agent.uplink)."""

    def describe(self) -> str: ...

    def pump(self, outbox: Outbox) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class PriorityLane:
    """One message frequency: its sink, its interval and the way to the outbox."""

    def __init__(self, prio: Frequency, outbox: Outbox, ident: Identity, batch_bytes: int) -> None:
        self.prio = prio
        self.outbox = outbox
        self.ident = ident
        self.batch_bytes = batch_bytes
        self.sink = EventSink(SinkOptions(batch_bytes=batch_bytes, max_batches=LANE_MAX_BATCHES))
        self.collectors: list[str] = []
        self.on_drop: Callable[[str, int], None] = outbox.drops.add
        self.deadline = 0.0
        self.stored = 0
        self.not_stored = 0
        self._sink_drops = {"dropped_full": 0, "dropped_encode": 0}

    def spill(self, batches: list[bytes]) -> None:
        for batch in batches:
            n = event_count(batch)
            seal = sealer(batch, self.ident, self.prio.value, sorted(self.collectors))
            if self.outbox.put(self.prio.value, seal, events=n) is None:
                self.not_stored += 1  # counted by the outbox, in its drops ledger
            else:
                self.stored += 1

    def store_full(self) -> None:
        """Batches the sink sealed because they were full go to the outbox at once."""
        self.spill(self.sink.take())

    def close_interval(self) -> None:
        self.spill(self.sink.seal())

    def resize(self, batch_bytes: int) -> None:
        if batch_bytes == self.batch_bytes:
            return
        self.close_interval()
        self.account_drops()
        self.batch_bytes = batch_bytes
        self.sink = EventSink(SinkOptions(batch_bytes=batch_bytes, max_batches=LANE_MAX_BATCHES))
        self._sink_drops = dict.fromkeys(self._sink_drops, 0)

    def account_drops(self) -> None:
        """The sink's drops since the last call go to the next envelope."""
        stats = self.sink.stats()
        for reason in self._sink_drops:
            total = int(getattr(stats, reason))
            delta = total - self._sink_drops[reason]
            if delta > 0:
                self.on_drop(f"{self.prio.value}.{reason}", delta)
            self._sink_drops[reason] = total


@dataclass
class Running:
    collector: Collector
    lane: Optional[PriorityLane] = None  # None while disabled or unavailable
    drops_seen: dict[str, int] | None = None
    next_tick: float = 0.0  # monotonic time of the collector's next tick


def lane_batch_bytes(config: Config, ident: Identity) -> int:
    # The envelope bound with every collector named is the largest a lane can need.
    return batch_bytes_for(config.upload.max_message_bytes, envelope_overhead(ident, list(COLLECTORS)))


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
    ) -> None:
        self.store = store
        self.env = env
        self.outbox = outbox
        self.uplink = uplink
        self.ident = ident
        self.config = store.config
        self.started = time.time()
        self.collectors = {c.name: Running(c) for c in collectors}
        batch_bytes = lane_batch_bytes(self.config, ident)
        self.lanes = {f: PriorityLane(f, outbox, ident, batch_bytes) for f in Frequency}
        for lane in self.lanes.values():
            lane.on_drop = self._drop
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = False
        self._reload = False
        self._watched: dict[int, Callable[[], None]] = {}
        env.watch = self._watch
        env.unwatch = self._unwatch
        self._status_path = env.data_dir / "status.json"
        self._last_status = 0.0
        self._next_housekeeping = 0.0
        self._coalesce_until = 0.0
        self._rates: dict[str, tuple[float, int, float]] = {}
        self._source_drops: dict[str, dict[str, int]] = {}
        # Every drop reported so far, by reason (the reported properties' counters).
        self.dropped: dict[str, int] = {}
        env.shared["statistics"] = self.statistics

    # -- control from signal handlers and other threads ---------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Runs fn in the loop's thread at its next turn (the uplink's twin handler uses it)."""
        self._calls.put(fn)
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
        """A validated change: touch only what it changed."""
        old, new = update.old, update.new
        self.config = new
        changed = set(update.changed_sections)
        for name in sorted(update.invalid_fields):
            log.warning("config: %s is invalid: %s", name,
                        self.store.invalid_reasons.get(name, "invalid"))
        if not changed:
            return
        log.info("config: changed %s", ", ".join(sorted(changed)))
        if {"Upload"} & changed:
            batch_bytes = lane_batch_bytes(new, self.ident)
            for lane in self.lanes.values():
                lane.resize(batch_bytes)
        if {"Outbox", "IothubModule"} & changed:
            self.outbox.max_bytes = new.outbox.max_bytes
            self.outbox.timeout_ms = new.iothub_module.message_timeout_minutes * 60_000
        if "CollectorsCore" in changed:
            now = time.monotonic()
            for lane in self.lanes.values():
                interval = self._interval(lane.prio)
                lane.deadline = min(lane.deadline, now + interval)
        touched = set(update.changed_collectors)
        if "Audit" in changed:
            touched |= {n for n, r in self.collectors.items()
                        if getattr(r.collector, "uses_audit", False)}
        for name in sorted(touched & set(self.collectors)):
            self._restart(name, old)

    def _interval(self, prio: Frequency) -> float:
        return 60.0 * self.config.collectors_core.priority_intervals.minutes(prio)

    def _frequency(self, name: str, config: Config) -> Frequency:
        return Frequency(config.collector(name).message_frequency)

    def _restart(self, name: str, old: Config | None) -> None:
        running = self.collectors[name]
        c = running.collector
        if running.lane is not None:
            self._guard(c, "stop", c.stop)  # a source's last events reach the aggregator
            c.flush(running.lane)
            running.lane.collectors.remove(name)
            running.lane = None
            c.lane = None
        section = self.config.collector(name)
        if section.disabled:
            c.state = CollectorState.disabled()
            log.info("%s: disabled", name)
            return
        lane = self.lanes[self._frequency(name, self.config)]
        try:
            c.configure(self.config)
            c.lane = lane
            state = c.start()
        except Exception as err:  # a collector that cannot start must not stop the agent
            log.error("%s: cannot start: %s: %s", name, type(err).__name__, err)
            state = CollectorState.unavailable(f"{type(err).__name__}: {err}")
        c.state = state
        if state.state != "running":
            c.lane = None
            self._guard(c, "stop", c.stop)
            log.warning("%s: unavailable: %s", name, state.reason)
            return
        running.lane = lane
        lane.collectors.append(name)
        if c.periodic:
            # A periodic collector (re)started takes its snapshot at once: at the agent's start
            # and after a patch (Baseline_ChecksDisabled, an override) alike.
            self._guard(c, "collect", lambda: c.collect(now_ms(), lane))
        log.info("%s: running (%s)%s", name, state.source or "-",
                 f": {state.reason}" if state.reason else "")

    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
        if fd in self._watched:
            self.selector.modify(fd, selectors.EVENT_READ, callback)
        else:
            self.selector.register(fd, selectors.EVENT_READ, callback)
        self._watched[fd] = callback

    def _unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            self.selector.unregister(fd)

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        now = time.monotonic()
        for lane in self.lanes.values():
            lane.deadline = now + self._interval(lane.prio)
        for name in self.collectors:
            self._restart(name, None)

    def run(self) -> int:
        self.start()
        try:
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
            # The sources were busy a moment ago: let their sockets gather a few more
            # datagrams (the kernel buffers hold megabytes) rather than wake for each one.
            time.sleep(self._coalesce_until - now)
            now = time.monotonic()
        next_due = min(self._next_housekeeping,
                       *(lane.deadline for lane in self.lanes.values()),
                       *(r.next_tick for r in self.collectors.values() if r.lane is not None))
        wait = max(0.0, min(timeout, next_due - now))
        busy = False
        for key, _ in self.selector.select(wait):
            if key.data is None:
                self._drain_wake()
                continue
            busy = True
            try:
                key.data()
            except Exception:
                log.exception("reading fd %d failed", key.fd)
        if busy:
            self._coalesce_until = time.monotonic() + COALESCE_S
        self._run_calls()
        if self._reload:
            self._reload = False
            log.info("config: rereading %s", self.store.path)
            self.apply(self.store.reload_file())
        now = time.monotonic()
        wall = now_ms()
        for running in self.collectors.values():
            lane = running.lane
            if lane is not None and now >= running.next_tick:
                c = running.collector
                running.next_tick = now + c.tick_interval()
                self._guard(c, "tick", lambda c=c, lane=lane: c.tick(wall, lane))
        for lane in self.lanes.values():
            if now >= lane.deadline:
                self.close_lane(lane)
                lane.deadline = now + self._interval(lane.prio)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + TICK_S
            self.account_drops()
            if now - self._last_status >= STATUS_EVERY_S:
                self._last_status = now
                self.write_status()
        for lane in self.lanes.values():
            lane.store_full()
        self.uplink.pump(self.outbox)

    def close_lane(self, lane: PriorityLane) -> None:
        wall = now_ms()
        for name in list(lane.collectors):
            c = self.collectors[name].collector
            self._guard(c, "collect", lambda c=c: c.collect(wall, lane))
        lane.close_interval()

    def _guard(self, c: Collector, what: str, fn: Callable[[], None]) -> None:
        """A collector's failure is counted and logged; the loop and the others go on."""
        try:
            fn()
        except Exception as err:
            c.counters[f"{what}_errors"] += 1
            if c.counters[f"{what}_errors"] <= 5:
                log.exception("%s: %s failed: %s", c.name, what, err)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("a call from another thread failed")

    def account_drops(self) -> None:
        for name, running in self.collectors.items():
            drops = running.collector.drops()
            seen = running.drops_seen or {}
            for reason, total in drops.items():
                delta = total - seen.get(reason, 0)
                if delta > 0:
                    self._drop(f"{name}.{reason}", delta)
            running.drops_seen = dict(drops)
        for source_name, source in self.env.sources.items():
            drops = source.drops()
            seen = self._source_drops.setdefault(source_name, {})
            for reason, total in drops.items():
                delta = total - seen.get(reason, 0)
                if delta > 0:
                    self._drop(f"{source_name}.{reason}", delta)
                seen[reason] = total
        for lane in self.lanes.values():
            lane.account_drops()

    def _drop(self, reason: str, count: int) -> None:
        self.outbox.drops.add(reason, count)
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def shutdown(self) -> None:
        """SIGTERM or the end: every collector's entries are stored, every lane sealed, the
        sources closed (the audit rules removed), the uplink given a last turn."""
        log.info("stopping: flushing collectors and lanes")
        # Shared sources first: closing them reads what is left and hands it to their
        # subscribers (and removes the audit rules); then each collector stops and flushes.
        for source_name, source in self.env.sources.items():
            try:
                source.close()
            except Exception:
                log.exception("%s: close failed", source_name)
        for running in self.collectors.values():
            lane = running.lane
            if lane is None:
                continue
            c = running.collector
            self._guard(c, "stop", c.stop)
            self._guard(c, "flush", lambda c=c, lane=lane: c.flush(lane))  # type: ignore[misc]
            running.lane = None
            c.lane = None
        self.account_drops()
        for lane in self.lanes.values():
            lane.close_interval()
        try:
            self.uplink.pump(self.outbox)
        finally:
            self.uplink.close()
            self.write_status(stopped=True)
            self.outbox.close()
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- status -----------------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Counters per collector, the lanes' and the outbox's (the Statistics event and
        the reported properties)."""
        return {
            "coll": {name: r.collector.stats() for name, r in self.collectors.items()},
            "lanes": {lane.prio.value: {"stored": lane.stored, "not_stored": lane.not_stored}
                      for lane in self.lanes.values()},
            "outbox": {k: v for k, v in vars(self.outbox.counters()).items()},
        }

    def collector_states(self) -> dict[str, CollectorState]:
        return {name: r.collector.state for name, r in self.collectors.items()}

    def reported_document(self) -> dict[str, Any]:
        """The module twin's reported properties (agent.config.reported): the effective
        configuration, latest_state and latest_invalid_fields, each collector's state, the
        counters (collected per collector, dropped by reason, the outbox's), the agent's
        version and the outbox depth."""
        collected = {name: int(r.collector.stats().get("collected", 0))
                     for name, r in self.collectors.items()}
        depth = sum(d.count for d in self.outbox.depth().values())
        counters = {"collected": collected, "dropped": dict(self.dropped),
                    "outbox": dict(vars(self.outbox.counters()))}
        return build_reported(self.config, self.store.invalid_reasons, self.collector_states(),
                              counters, agent_version=__version__, outbox_depth=depth)

    def write_status(self, stopped: bool = False) -> None:
        now = time.time()
        collectors: dict[str, Any] = {}
        for name, r in self.collectors.items():
            stats = r.collector.stats()
            collected = int(stats.get("collected", 0))
            last = self._rates.get(name)
            rate = 0.0
            if last is not None and now > last[0]:
                rate = max(0.0, (collected - last[1]) / (now - last[0]))
            self._rates[name] = (now, collected, rate)
            collectors[name] = {
                **r.collector.state.to_json(),
                "frequency": self._frequency(name, self.config).value,
                "events_per_s": round(rate, 2),
                "counters": stats,
            }
        depth = {prio: {"count": d.count, "bytes": d.bytes} for prio, d in self.outbox.depth().items()}
        status = {
            "pid": os.getpid(),
            "version": __version__,
            "running": not stopped,
            "started": int(self.started),
            "updated": int(now),
            "config": {"latest_state": self.store.latest_state,
                       "latest_invalid_fields": list(self.store.latest_invalid_fields)},
            "uplink": self.uplink.status(),
            "collectors": collectors,
            "outbox": {"depth": depth, "counters": vars(self.outbox.counters()),
                       "pending_drops": self.outbox.drops.peek()},
            "reported": self.reported_document(),
            # The top-level modules this process has loaded (micro-agent status --modules).
            "modules": sorted({name.partition(".")[0] for name in list(sys.modules)}),
        }
        tmp = self._status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, indent=1, sort_keys=True))
            os.replace(tmp, self._status_path)
        except OSError as err:
            if err.errno != errno.ENOSPC or not stopped:
                log.warning("status: cannot write %s: %s", self._status_path, err)


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM and SIGINT stop the agent cleanly; SIGHUP rereads the local configuration."""
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
