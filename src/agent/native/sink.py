"""The event sink every live source writes into (native/sink.c): their events, packed into
msgpack batches, taken by Python a batch at a time; and `pump`, the one loop that drives a
source's resumable call (`drain(sink) -> more`) until it is done."""

from __future__ import annotations

from collections.abc import Callable

from agent._core import ffi, lib
from agent.native._base import AM_OK, CoreStats, NativeHandle, check
from agent.record import record

# Buffers the C core fills before they are read: not cleared first, so that only the pages
# written are ever touched.
_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


@record(frozen=True)
class SinkOptions:
    """batch_bytes: a batch never exceeds it (default agent.limits.DEFAULT_MAX_MESSAGE_BYTES);
    max_batches: sealed batches held before the sources stop reading (default 8). None keeps
    the default."""

    batch_bytes: int | None = None
    max_batches: int | None = None


class EventSink(NativeHandle):
    """Batches of events from the live sources; pass it to a source's drain or scan call."""

    _what = "event sink"

    def __init__(self, options: SinkOptions | None = None) -> None:
        opts = self._make(lib.am_sink_new, lib.am_sink_free, options, "struct am_sink_options",
                          lib.am_sink_default_options)
        self.batch_bytes = int(opts.batch_bytes)
        self._data = ffi.new("uint8_t **")
        self._len = ffi.new("size_t *")
        self._events = ffi.new("uint32_t *")

    @property
    def handle(self) -> object:
        """The am_sink pointer, for the sources' calls."""
        return self._live()

    def full(self) -> bool:
        return bool(lib.am_sink_full(self._live()))

    def take(self) -> list[bytes]:
        """Every sealed batch, oldest first (each the bytes of one msgpack array)."""
        handle = self._live()
        out: list[bytes] = []
        while lib.am_sink_take(handle, self._data, self._len, self._events) == AM_OK:
            out.append(bytes(ffi.buffer(self._data[0], self._len[0])))
        return out

    def seal(self) -> list[bytes]:
        """Seal the open batch and return every sealed batch."""
        check(lib.am_sink_seal(self._live()), "am_sink_seal")
        return self.take()

    def open_batch(self) -> bytes | None:
        """A copy of the open batch as a sealed one would be (None when it holds no event); the
        batch stays open."""
        handle = self._live()
        # A buffer of a batch's size for this copy only (a checkpoint takes one per period):
        # one kept from copy to copy stayed resident to the size of the largest open batch it
        # ever held (an SBoM snapshot's: 180 kB). Freed, it leaves the heap (native/heap.c).
        buf = _uncleared("uint8_t[]", self.batch_bytes)
        status = lib.am_sink_copy_open(handle, buf, self.batch_bytes, self._len)
        if status == lib.AM_EMPTY:
            return None
        check(status, "am_sink_copy_open")
        return bytes(ffi.buffer(buf, self._len[0]))

    def events(self) -> int:
        """Events taken in so far: the one counter the pump reads after every drain, without
        copying the rest of the stats."""
        return int(self._fill_stats("struct am_sink_stats", lib.am_sink_stats).events)

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_sink_stats", lib.am_sink_stats)

    def counters(self, *names: str) -> tuple[int, ...]:
        """Only the named fields of stats(), read without copying the others."""
        return self._read_fields("struct am_sink_stats", lib.am_sink_stats, names)


def pump(
    call: Callable[[EventSink], bool],
    sink: EventSink,
    deliver: Callable[[list[bytes]], object],
    seal: bool = False,
) -> int:
    """Runs a source's resumable call until it says no more: after each call the sink's sealed
    batches go to `deliver` (with seal=True also the open batch at the end). Returns the events
    the sink took in meanwhile."""
    before = sink.events()
    while True:
        more = call(sink)
        batches = sink.take()
        if batches:
            deliver(batches)
        if not more:
            break
    if seal:
        batches = sink.seal()
        if batches:
            deliver(batches)
    return sink.events() - before
