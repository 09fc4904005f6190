"""LogCollector: the agent's own warnings and errors as `log` events, so that a fleet operator
sees why a device's agent is degraded without logging into it.

A logging.Handler on the root logger (while the collector runs) keeps one entry per level,
logger and message template (record.msg, not the formatted text: a storm of one warning with
varying arguments stays one entry) with its hits and the first and last time, in a table of
at most MAX_ENTRIES; records beyond it are counted and sent as one entry of their own. At the
end of LogCollector_MessageFrequency's interval the table becomes events and empties.

The handler never logs: a failure inside it is counted (`handler_errors`), and a record
raised while it runs (a library logging from inside it) is not taken again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

from agent.clock import wall_ms
from agent.collectors.base import Collector
from agent.config import CollectorState
from agent.record import record

MAX_ENTRIES = 256
# A template or logger name longer than these is cut (a message built by concatenation).
MAX_TEMPLATE_CHARS = 512
MAX_LOGGER_CHARS = 128
# The logger and template of the entry that counts records the full table did not keep.
OVERFLOW_LOGGER = "agent.collectors.log"
OVERFLOW_TEMPLATE = "log records not kept: the table of distinct messages was full"


@record
class _Entry:
    hits: int
    first: int
    last: int


class LogTable(logging.Handler):
    """WARNING and above, by (level, logger, template), bounded."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        super().__init__(logging.WARNING)
        self.max_entries = max_entries
        self.entries: dict[tuple[str, str, str], _Entry] = {}
        self.overflow = 0  # records not kept since the last take()
        self.overflow_first = 0
        self.overflow_last = 0
        self.records = 0  # records taken, ever
        self.overflow_total = 0
        self.handler_errors = 0
        self._table_lock = threading.Lock()
        self._inside = threading.local()

    def handle(self, record: logging.LogRecord) -> bool:
        # Not logging.Handler.handle's filter-then-emit with handleError: handleError prints
        # through logging's own machinery; here nothing a record does may log again.
        if getattr(self._inside, "active", False) or record.levelno < self.level:
            return False
        self._inside.active = True
        try:
            with self._table_lock:
                self._take(record)
        except Exception:  # noqa: BLE001 - counted: the handler must never raise or log
            self.handler_errors += 1
        finally:
            self._inside.active = False
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _take(self, record: logging.LogRecord) -> None:
        now = wall_ms()
        self.records += 1
        key = (record.levelname, record.name[:MAX_LOGGER_CHARS],
               str(record.msg)[:MAX_TEMPLATE_CHARS])
        entry = self.entries.get(key)
        if entry is not None:
            entry.hits += 1
            entry.last = now
        elif len(self.entries) < self.max_entries:
            self.entries[key] = _Entry(1, now, now)
        else:
            if self.overflow == 0:
                self.overflow_first = now
            self.overflow += 1
            self.overflow_total += 1
            self.overflow_last = now

    def take(self) -> list[dict[str, Any]]:
        """The entries as `log` events, oldest first; the table empties."""
        with self._table_lock:
            entries, self.entries = self.entries, {}
            overflow, self.overflow = self.overflow, 0
            span = (self.overflow_first, self.overflow_last)
        events = [_event(level, logger, template, e.hits, e.first, e.last)
                  for (level, logger, template), e in entries.items()]
        if overflow:
            events.append(_event("WARNING", OVERFLOW_LOGGER, OVERFLOW_TEMPLATE, overflow, *span))
        return events


def _event(level: str, logger: str, template: str, hits: int, first: int, last: int
           ) -> dict[str, Any]:
    return {"t": "log", "ts": first, "src": "agent", "level": level, "logger": logger,
            "msg": template, "hits": hits, "first": first, "last": last}


class LogCollector(Collector):
    """The table listens from the collector's making, so that the warnings of the agent's
    start (collectors unavailable, invalid settings) are kept for the first interval; a
    collector disabled by the configuration stops listening and forgets them."""

    name = "LogCollector"
    accept = ("log",)
    periodic: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = LogTable()
        self._closed = {"records": 0, "overflow": 0, "handler_errors": 0}
        logging.getLogger().addHandler(self.table)

    @property
    def state(self) -> CollectorState:
        return self._state

    @state.setter
    def state(self, value: CollectorState) -> None:
        # The pipeline says "disabled" (or "unavailable") by setting the state: stop listening.
        self._state = value
        if value.state != "running" and "table" in self.__dict__:
            self._detach()

    def _detach(self) -> None:
        logging.getLogger().removeHandler(self.table)
        self._closed["records"] += self.table.records
        self._closed["overflow"] += self.table.overflow_total
        self._closed["handler_errors"] += self.table.handler_errors
        self.table = LogTable()

    def start(self) -> CollectorState:
        root = logging.getLogger()
        if self.table not in root.handlers:
            root.addHandler(self.table)
        return CollectorState.running("logging")

    def stop(self) -> None:
        # What the table holds goes into the lane before the pipeline flushes the collector.
        if self.lane is not None:
            self.collect(0, self.lane)
        self._detach()

    def snapshot(self, now: int) -> Iterable[dict[str, Any]]:
        return self.table.take()

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["records"] = self._closed["records"] + self.table.records
        out["overflow"] = self._closed["overflow"] + self.table.overflow_total
        out["handler_errors"] = self._closed["handler_errors"] + self.table.handler_errors
        return out
