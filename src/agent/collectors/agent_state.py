"""The agent's own periodic collectors: Heartbeat (it is alive, which version, how long up)
and Statistics (per collector: events collected, sent, dropped by reason; the outbox)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from agent import __version__
from agent.collectors.base import Collector


class HeartbeatCollector(Collector):
    name = "Heartbeat"
    accept = ("heartbeat",)
    periodic: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started = time.monotonic()

    def snapshot(self, now: int) -> Iterable[dict[str, Any]]:
        return [{"t": "heartbeat", "ts": now, "src": "agent", "ver": __version__,
                 "up": int(time.monotonic() - self._started)}]


class StatisticsCollector(Collector):
    name = "Statistics"
    accept = ("stats",)
    periodic: ClassVar[bool] = True

    def snapshot(self, now: int) -> Iterable[dict[str, Any]]:
        counters: Callable[[], dict[str, Any]] | None = self.env.shared.get("statistics")
        if counters is None:
            return []
        return [{"t": "stats", "ts": now, "src": "agent", **counters()}]
