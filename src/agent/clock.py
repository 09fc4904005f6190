"""The agent's one wall clock: every time of day the runtime stamps (event `ts` of snapshots and
collections, envelopes, the outbox's ages, checkpoints, the status file, the uplink's state)
comes from here, so that a wall-clock jump reaches all of them at once, and so that a test can
jump it without touching the machine's clock (tests/test_soak.py, docs/soak.md).

The offset: with MICRO_AGENT_CLOCK_OFFSET_FILE set in the environment, the file it names holds
seconds (a float, may be negative) added to the system's time. The file is read at the first
use and again when its modification time changes, looked at no more than once a second, so a
jump takes effect within a second and costs one stat() a second. Unset (production), the clock
is time.time() itself. Durations and timers never use the wall clock (time.monotonic()).

Jumps: the clock compares itself with the monotonic clock at each reading; when the difference
moved by more than JUMP_S since the previous reading, the wall clock was set (by NTP, an
operator, a test's offset) and the jump is counted (`stats()`: in status.json and in the
reported properties' counters), so that a jump is visible where events' times look odd.
"""

from __future__ import annotations

import os
import time

OFFSET_FILE_ENV = "MICRO_AGENT_CLOCK_OFFSET_FILE"
RECHECK_S = 1.0
# A change of wall minus monotonic larger than this is a jump (NTP slews far slower).
JUMP_S = 2.0


class WallClock:
    """time.time() plus an offset read from a file (none without a file)."""

    def __init__(self, offset_file: str | None) -> None:
        self.offset_file = offset_file or None
        self._offset_s = 0.0
        self._seen_mtime_ns = -1
        self._next_check = float("-inf")
        self._skew_s: float | None = None
        self.jumps_forward = 0
        self.jumps_backward = 0
        self.last_jump_s = 0.0

    def offset_s(self) -> float:
        """The current offset; rereads the file when it changed (at most once a second)."""
        if self.offset_file is None:
            return 0.0
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RECHECK_S
            self._reread()
        return self._offset_s

    def _reread(self) -> None:
        assert self.offset_file is not None
        try:
            mtime_ns = os.stat(self.offset_file).st_mtime_ns
            if mtime_ns == self._seen_mtime_ns:
                return
            with open(self.offset_file) as f:
                text = f.read().strip()
        except OSError:
            return  # absent or unreadable: the offset stays what it was
        try:
            self._offset_s = float(text) if text else 0.0
        except ValueError:
            return
        self._seen_mtime_ns = mtime_ns

    def time(self) -> float:
        """Seconds since the epoch, as time.time()."""
        now = time.time() + self.offset_s()
        self._observe(now)
        return now

    def time_ms(self) -> int:
        """Milliseconds since the epoch, UTC."""
        now_ms = time.time_ns() // 1_000_000 + int(self.offset_s() * 1000)
        self._observe(now_ms / 1000)
        return now_ms

    def _observe(self, wall: float) -> None:
        skew = wall - time.monotonic()
        if self._skew_s is not None and abs(skew - self._skew_s) > JUMP_S:
            if skew > self._skew_s:
                self.jumps_forward += 1
            else:
                self.jumps_backward += 1
            self.last_jump_s = round(skew - self._skew_s, 3)
        self._skew_s = skew

    def counts(self) -> dict[str, int]:
        """Jumps seen since the start, by direction (the reported properties' counters)."""
        return {"jumps_forward": self.jumps_forward, "jumps_backward": self.jumps_backward}

    def stats(self) -> dict[str, float]:
        """counts(), the last jump's size in seconds and the current offset (status.json)."""
        return {**self.counts(), "last_jump_s": self.last_jump_s, "offset_s": self._offset_s}


CLOCK = WallClock(os.environ.get(OFFSET_FILE_ENV))


def wall_time() -> float:
    """Seconds since the epoch by the agent's clock."""
    return CLOCK.time()


def wall_ms() -> int:
    """Milliseconds since the epoch by the agent's clock."""
    return CLOCK.time_ms()


def kernel_ms() -> int:
    """The system's CLOCK_REALTIME in milliseconds, without the offset: the clock the kernel
    stamps audit records with. Only for ageing those records (the audit parser's expiry)."""
    return time.time_ns() // 1_000_000
