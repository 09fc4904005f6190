"""What every collector is: a name (its twin prefix), the event types it emits, how it merges
them, and the hooks the pipeline calls.

The pipeline owns the loop and the lanes (one per priority, see agent.pipeline); a collector
owns its sources and its aggregator. Events travel as batches of msgpack bytes from a source's
sink through the collector's aggregator into the lane's sink: no per-event Python object,
except in the periodic snapshots of the inventory collectors, which are not a hot path.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgpack

from agent.clock import wall_ms
from agent.config import CollectorState, Config
from agent.native.aggregate import AggregateKind, Aggregator
from agent.native.sink import EventSink
from agent.record import field, record

log = logging.getLogger("agent.collectors")


def now_ms() -> int:
    return wall_ms()


class Lane(Protocol):
    """Where a collector's events go: the sink of its priority, and the way out for the
    batches that filled up (to the outbox)."""

    @property
    def sink(self) -> EventSink: ...

    def spill(self, batches: list[bytes]) -> None: ...


class Watch(Protocol):
    """watch(fd, callback, filling): the loop calls callback() when fd is readable. A callback
    may return how many seconds its socket can gather before the next drain (agent.pipeline);
    more than GATHER_CHECK_S only with `filling`, which the loop asks every GATHER_CHECK_S of
    the gather whether the socket fills too fast to wait for its end."""

    def __call__(self, fd: int, callback: Callable[[], object],
                 filling: Callable[[], bool] | None = None) -> None: ...


def _no_watch(fd: int, callback: Callable[[], object],
              filling: Callable[[], bool] | None = None) -> None:
    raise RuntimeError("this environment has no loop to watch file descriptors")


def _no_unwatch(fd: int) -> None:
    pass


@record
class Environment:
    """What collectors share: where the agent keeps its state, the root the inventory reads
    files under (tests point it at a prepared tree), the loop's file descriptor watch, and
    sources shared between collectors (`sources`: the audit socket feeds Process,
    NetworkActivity and Login); the pipeline reports the drops of every shared source."""

    data_dir: Path
    root: Path = Path("/")
    shared: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    # watch(fd, callback[, filling]): the loop calls callback() when fd is readable (Watch);
    # unwatch(fd) stops.
    watch: Watch = _no_watch
    unwatch: Callable[[int], None] = _no_unwatch


class Collector:
    """Base of every collector. Subclasses set `name`, `kind`, `accept` and override the hooks
    they need; the pipeline calls configure() first and again on every change of the
    collector's twin section, start() when it is enabled, stop() when it is disabled or the
    agent stops."""

    name: ClassVar[str]
    kind: ClassVar[AggregateKind] = "none"
    accept: ClassVar[tuple[str, ...]] = ()
    # Whether collect() takes a snapshot (periodic collectors) rather than only flushing what
    # the sources delivered.
    periodic: ClassVar[bool] = False

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.counters: Counter[str] = Counter()
        self.state = CollectorState.disabled()
        self.config: Config | None = None
        self.aggregator: Aggregator | None = None
        # The lane of the collector's frequency while it runs (set by the pipeline).
        self.lane: Lane | None = None
        self._cache_size = 0

    # -- configuration and lifecycle ----------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Takes the collector's settings. The aggregator is made again only when its size
        changed (the pipeline flushes it first)."""
        self.config = config
        cache_size = int(getattr(config.collector(self.name), "cache_size", 256))
        if self.aggregator is None or cache_size != self._cache_size:
            self.aggregator = Aggregator(self.kind, cache_size=cache_size, accept=self.accept)
            self._cache_size = cache_size

    def start(self) -> CollectorState:
        """Opens the sources (registering their file descriptors with env.watch); returns the
        state to report (running with its source, or unavailable with the reason)."""
        return CollectorState.running()

    def stop(self) -> None:
        """Closes the sources. The pipeline has flushed the aggregator already."""

    # -- work -----------------------------------------------------------------------------------

    def tick(self, now: int, lane: Lane) -> None:
        """Every tick_interval(): timers of the sources (expiry, polls, snapshots to diff).
        `now` is the monotonic clock in milliseconds: a schedule paced on the wall clock would
        stall for an hour when the clock is set back an hour."""

    def tick_interval(self) -> float:
        """Seconds between two ticks."""
        return 1.0

    def collect(self, now: int, lane: Lane) -> None:
        """The end of the collector's interval: periodic collectors take their snapshot; every
        collector flushes its aggregated entries into the lane."""
        if self.periodic:
            try:
                batch = self.snapshot_batch(now)
            # A gatherer bug must not stop the agent: count and say.
            except Exception as err:  # noqa: BLE001
                self.counters["errors"] += 1
                log.error("%s: snapshot failed: %s: %s", self.name, type(err).__name__, err)
                batch = None
            if batch is not None:
                self.route(batch, lane)
        self.flush(lane)

    def snapshot(self, now: int) -> Iterable[dict[str, Any]]:
        """Periodic collectors: the events of one snapshot."""
        return ()

    def snapshot_batch(self, now: int) -> bytes | None:
        """Periodic collectors: one snapshot's events as a msgpack array (None: no event). A
        collector whose snapshot is large packs it as it gathers instead (SBoM)."""
        events = list(self.snapshot(now))
        return msgpack.packb(events, use_bin_type=True) if events else None

    # -- moving batches -------------------------------------------------------------------------

    def route(self, batch: bytes, lane: Lane) -> None:
        """One batch of a source into the lane, through the aggregator."""
        assert self.aggregator is not None, "configure() first"
        lane.spill(self.aggregator.add(batch, lane.sink))

    def route_all(self, batches: list[bytes], lane: Lane) -> None:
        """Batches of a source (a pump's delivery) into the lane, through the aggregator."""
        for batch in batches:
            self.route(batch, lane)

    def flush(self, lane: Lane) -> None:
        if self.aggregator is not None:
            lane.spill(self.aggregator.flush(lane.sink))

    def drops(self) -> dict[str, int]:
        """Events lost at the collector's sources, by reason, counted since it was made (the
        pipeline reports the increase in the next envelope): the kernel's lost records, a
        socket's ENOBUFS, serial gaps, a full sink. Each source collector says its own."""
        return {}

    def stats(self) -> dict[str, int]:
        """Counters for the reported properties and `micro-agent status`: the collector's own
        and its aggregator's."""
        out = dict(self.counters)
        if self.aggregator is not None:
            s = self.aggregator.stats()
            out.update(
                collected=s.events_in - s.skipped,
                aggregated=s.merged,
                evicted=s.evicted,
                malformed=s.malformed + out.get("malformed", 0),
            )
        return out
