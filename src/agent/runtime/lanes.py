"""The priority lanes: one per message frequency (High, Medium, Low), each an event sink that
every collector of that frequency writes into (through its aggregator), closed at the lane's
interval (CollectorsCore_PriorityIntervals). A batch that fills up on the way is stored at
once; at the interval the lane's last batch is sealed and stored. Each stored batch is sealed
in its envelope (agent.envelope) by the outbox's `put`."""

from __future__ import annotations

from collections.abc import Callable

from agent.config import COLLECTORS, Config, Frequency
from agent.envelope import Identity, batch_bytes_for, envelope_overhead, event_count, sealer
from agent.native.sink import EventSink, SinkOptions
from agent.outbox import Outbox

LANE_MAX_BATCHES = 4
# The sink's counters that are drops, by reason.
SINK_DROPS = ("dropped_full", "dropped_encode")


def lane_batch_bytes(config: Config, ident: Identity) -> int:
    # The envelope bound with every collector named is the largest a lane can need.
    return batch_bytes_for(config.upload.max_message_bytes, envelope_overhead(ident, list(COLLECTORS)))


def lane_interval_s(config: Config, prio: Frequency) -> float:
    return 60.0 * config.collectors_core.priority_intervals.minutes(prio)


class PriorityLane:
    """One message frequency: its sink, its interval and the way to the outbox."""

    def __init__(self, prio: Frequency, outbox: Outbox, ident: Identity, batch_bytes: int,
                 interval_s: float) -> None:
        self.prio = prio
        self.outbox = outbox
        self.ident = ident
        self.batch_bytes = batch_bytes
        self.sink = EventSink(SinkOptions(batch_bytes=batch_bytes, max_batches=LANE_MAX_BATCHES))
        self.collectors: list[str] = []
        self.interval_s = interval_s
        self.deadline = 0.0  # monotonic time the interval ends
        self.stored = 0
        self.not_stored = 0
        # Outbox_CheckpointSeconds > 0: called with the batches before they are stored, to
        # record them in the lane's checkpoint first (agent.runtime.checkpoint).
        self.write_ahead: Callable[[PriorityLane, list[bytes]], object] | None = None
        # With the write-ahead on: sealed batches not yet stored, until spill_held.
        self._held: list[bytes] = []
        # The drops of the sinks replaced by resize(), so that drops() never goes back.
        self._retired_drops = dict.fromkeys(SINK_DROPS, 0)

    @property
    def name(self) -> str:
        return self.prio.value

    def spill(self, batches: list[bytes]) -> None:
        """Batches the sink sealed. With checkpoints on they are held until spill_held (the
        loop calls it once a second) or until LANE_MAX_BATCHES are held: each write-ahead
        rewrites the lane's whole checkpoint with an fsync, and one per batch was a sixth of
        the agent's CPU at 1,600 execs a second. Held, they are still in every checkpoint
        written meanwhile (as pending: `held`), so a crash loses no more than before."""
        if not batches:
            return
        if self.write_ahead is None:
            self.store(batches)
            return
        self._held += batches
        if len(self._held) >= LANE_MAX_BATCHES:
            self.spill_held()

    def spill_held(self) -> None:
        """The held batches: written ahead into the lane's checkpoint (when on), then stored."""
        batches, self._held = self._held, []
        if not batches:
            return
        if self.write_ahead is not None:
            self.write_ahead(self, batches)
        self.store(batches)

    @property
    def held(self) -> list[bytes]:
        """The sealed batches waiting for spill_held, oldest first."""
        return list(self._held)

    def store(self, batches: list[bytes]) -> None:
        """Batches into the outbox, each sealed in its envelope."""
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
        self.spill_held()

    def start_interval(self, now: float) -> None:
        self.deadline = now + self.interval_s

    def set_interval(self, interval_s: float, now: float) -> None:
        """A new interval length: the running interval ends no later than the new one would."""
        self.interval_s = interval_s
        self.deadline = min(self.deadline, now + interval_s)

    def resize(self, batch_bytes: int) -> bool:
        """A new batch size (Upload_MaxMessageBytes): the open batch is stored and a new sink
        made. False when the size is the same (nothing done)."""
        if batch_bytes == self.batch_bytes:
            return False
        self.close_interval()
        self._retired_drops = self.drops()
        self.batch_bytes = batch_bytes
        self.sink = EventSink(SinkOptions(batch_bytes=batch_bytes, max_batches=LANE_MAX_BATCHES))
        return True

    def drops(self) -> dict[str, int]:
        """Events the lane's sinks lost, by reason, since the lane was made."""
        # Asked once a second (the drop ledger): the two counters, not the whole struct.
        now = self.sink.counters(*SINK_DROPS)
        return {reason: self._retired_drops[reason] + n for reason, n in zip(SINK_DROPS, now)}
