"""Live configuration and the collectors' lifecycle in the lanes.

A patch (from the twin, or the local file on SIGHUP) is validated by agent.config; here only
what it changed is touched (`changes_of`): the lanes' batch size (Upload), the outbox's bounds
(Outbox, IothubModule), the lanes' intervals (CollectorsCore), and exactly the collectors whose
own section changed (and those that read the audit source, when Audit changed). Such a
collector is stopped, flushed into its old lane and started again on the new configuration in
the lane of its frequency; one whose `_Disabled` turned true is flushed and stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial

from agent.collectors.base import Collector, now_ms
from agent.config import CollectorState, Config, ConfigUpdate, Frequency
from agent.envelope import Identity
from agent.outbox import Outbox
from agent.record import record
from agent.runtime.drops import DropTotals
from agent.runtime.lanes import PriorityLane, lane_batch_bytes, lane_interval_s

log = logging.getLogger("agent")


@record
class Running:
    """A collector in the loop: its lane while it runs, and when it ticks next."""

    collector: Collector
    lane: PriorityLane | None = None  # None while disabled or unavailable
    next_tick: float = 0.0  # monotonic time of the collector's next tick


def guard(c: Collector, what: str, fn: Callable[[], None]) -> None:
    """A collector's failure is counted and logged; the loop and the others go on."""
    try:
        fn()
    except Exception:
        c.counters[f"{what}_errors"] += 1
        if c.counters[f"{what}_errors"] <= 5:
            log.exception("%s: %s failed", c.name, what)


def frequency_of(config: Config, name: str) -> Frequency:
    return Frequency(config.collector(name).message_frequency)


@record(frozen=True)
class Changes:
    """What a configuration change touches."""

    batch_size: bool  # the lanes' batch size (Upload)
    outbox_bounds: bool  # Outbox_MaxBytes, IothubModule_MessageTimeout
    intervals: bool  # CollectorsCore_PriorityIntervals
    collectors: tuple[str, ...]  # to restart, in name order

    def __bool__(self) -> bool:
        return self.batch_size or self.outbox_bounds or self.intervals or bool(self.collectors)


def changes_of(update: ConfigUpdate, collectors: Mapping[str, Collector]) -> Changes:
    """Exactly what `update` changed, among the collectors the agent has."""
    changed = update.changed_sections
    touched = set(update.changed_collectors)
    if "Audit" in changed:
        touched |= {name for name, c in collectors.items() if getattr(c, "uses_audit", False)}
    return Changes(
        batch_size="Upload" in changed,
        outbox_bounds=bool({"Outbox", "IothubModule"} & changed),
        intervals="CollectorsCore" in changed,
        collectors=tuple(sorted(touched & set(collectors))),
    )


class Reconfiguration:
    """Starts the collectors into their lanes, and applies each change to what it touched."""

    def __init__(self, collectors: Mapping[str, Running], lanes: Mapping[Frequency, PriorityLane],
                 outbox: Outbox, ident: Identity, drops: DropTotals,
                 invalid_reasons: Callable[[], Mapping[str, str]]) -> None:
        self.collectors = collectors
        self.lanes = lanes
        self.outbox = outbox
        self.ident = ident
        self.drops = drops
        self._invalid_reasons = invalid_reasons

    def start(self, config: Config, now: float) -> None:
        """The agent starts: every lane opens its interval, every collector (re)starts."""
        for lane in self.lanes.values():
            lane.interval_s = lane_interval_s(config, lane.prio)
            lane.start_interval(now)
        for name in self.collectors:
            self.restart(name, config)

    def apply(self, update: ConfigUpdate, now: float) -> Changes:
        """A validated change: touch only what it changed; returns what that was."""
        new = update.new
        reasons = self._invalid_reasons()
        for name in sorted(update.invalid_fields):
            log.warning("config: %s is invalid: %s", name, reasons.get(name, "invalid"))
        changes = changes_of(update, {n: r.collector for n, r in self.collectors.items()})
        if not update.changed_sections:
            return changes
        log.info("config: changed %s", ", ".join(sorted(update.changed_sections)))
        if changes.batch_size:
            batch_bytes = lane_batch_bytes(new, self.ident)
            for lane in self.lanes.values():
                if lane.resize(batch_bytes):
                    # The old sink's last drops go with the next envelope, as they would have.
                    self.drops.observe(lane.prio.value, lane.drops())
        if changes.outbox_bounds:
            self.outbox.max_bytes = new.outbox.max_bytes
            self.outbox.timeout_ms = new.iothub_module.message_timeout_minutes * 60_000
        if changes.intervals:
            for lane in self.lanes.values():
                lane.set_interval(lane_interval_s(new, lane.prio), now)
        for name in changes.collectors:
            self.restart(name, new)
        return changes

    def stop(self, name: str, *, final: bool = False) -> None:
        """The collector leaves its lane: its sources close (their last events reach the
        aggregator) and its aggregated entries are flushed into the lane. `final`: the agent
        stops, and the lane still names the collector in its last batch's `coll`."""
        running = self.collectors[name]
        lane = running.lane
        if lane is None:
            return
        c = running.collector
        guard(c, "stop", c.stop)
        guard(c, "flush", partial(c.flush, lane))
        if not final:
            lane.collectors.remove(name)
        running.lane = None
        c.lane = None

    def restart(self, name: str, config: Config) -> None:
        """Stop the collector if it runs, then start it on `config` unless it is disabled."""
        self.stop(name)
        running = self.collectors[name]
        c = running.collector
        if config.collector(name).disabled:
            c.state = CollectorState.disabled()
            log.info("%s: disabled", name)
            return
        lane = self.lanes[frequency_of(config, name)]
        try:
            c.configure(config)
            c.lane = lane
            state = c.start()
        except Exception as err:  # noqa: BLE001 - a collector that cannot start must not stop the agent
            log.error("%s: cannot start: %s: %s", name, type(err).__name__, err)
            state = CollectorState.unavailable(f"{type(err).__name__}: {err}")
        c.state = state
        if state.state != "running":
            c.lane = None
            guard(c, "stop", c.stop)
            log.warning("%s: unavailable: %s", name, state.reason)
            return
        running.lane = lane
        lane.collectors.append(name)
        if c.periodic:
            # A periodic collector (re)started takes its snapshot at once: at the agent's start
            # and after a patch (Baseline_ChecksDisabled, an override) alike.
            guard(c, "collect", partial(c.collect, now_ms(), lane))
        log.info("%s: running (%s)%s", name, state.source or "-",
                 f": {state.reason}" if state.reason else "")
