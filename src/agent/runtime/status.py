"""DATA/status.json, what `micro-agent status` prints: the process, the configuration's
latest state, the uplink, each collector (state, frequency, events per second, counters),
the outbox (depth, counters, the drops waiting for the next envelope) and the reported
properties. Built every 5 s while the agent runs, and rewritten when anything in it but
`updated` changed, else at least every REFRESH_S (so `updated`, the time of the last rewrite,
still tells a live agent from a hung one); once more when it stops. Idle, most documents are
the same as the last one, and the rewrite (encoding, a new file, a rename) was most of the
status's cost.

The file is replaced by a rename (a reader never sees half of it) without fsync: it is
rewritten often and worth nothing after a power cut.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import __version__
from agent.collectors.base import Collector
from agent.config import Frequency
from agent.durable import replace_file
from agent.outbox import Outbox

log = logging.getLogger("agent")

# An unchanged document is written again after this long, for its `updated`.
REFRESH_S = 60.0


class StatusWriter:
    def __init__(self, path: Path, started: float) -> None:
        self.path = path
        self.started = started
        # Per collector: (time, collected, rate) at the last document.
        self._rates: dict[str, tuple[float, int, float]] = {}
        # The last document written, encoded without `updated` (bytes: the document holds
        # dicts that its sources may change later), and its `updated`.
        self._written: bytes | None = None
        self._written_at = 0.0
        self._modules_seen: tuple[int, list[str]] = (0, [])

    def _rate(self, name: str, collected: int, now: float) -> float:
        """Events per second since the previous document (0 at the first, or when a counter
        went back)."""
        last = self._rates.get(name)
        rate = 0.0
        if last is not None and now > last[0]:
            rate = max(0.0, (collected - last[1]) / (now - last[0]))
        self._rates[name] = (now, collected, rate)
        return rate

    def document(self, *, now: float, running: bool, config_state: Mapping[str, Any],
                 uplink: Mapping[str, Any], collectors: Mapping[str, Collector],
                 frequencies: Mapping[str, Frequency], outbox: Outbox,
                 reported: Mapping[str, Any], stats: Mapping[str, Mapping[str, Any]]
                 ) -> dict[str, Any]:
        """The status document at wall time `now` (it advances the events-per-second rates);
        `stats`: each collector's stats(), read once for this document and the reported
        properties in it."""
        entries: dict[str, Any] = {}
        for name, c in collectors.items():
            counters = dict(stats[name])
            rate = self._rate(name, int(counters.get("collected", 0)), now)
            entries[name] = {
                **c.state.to_json(),
                "frequency": frequencies[name].value,
                "events_per_s": round(rate, 2),
                "counters": counters,
            }
        depth = {prio: {"count": d.count, "bytes": d.bytes} for prio, d in outbox.depth().items()}
        return {
            "pid": os.getpid(),
            "version": __version__,
            "running": running,
            "started": int(self.started),
            "updated": int(now),
            "config": dict(config_state),
            "uplink": dict(uplink),
            "collectors": entries,
            "outbox": {"depth": depth, "counters": vars(outbox.counters()),
                       "pending_drops": outbox.drops.peek()},
            "reported": dict(reported),
            # The top-level modules this process has loaded (micro-agent status --modules).
            "modules": self._modules(),
        }

    def _modules(self) -> list[str]:
        """Listed again only when sys.modules grew or shrank: once the collectors run, it is
        the same list at every document."""
        if len(sys.modules) != self._modules_seen[0]:
            self._modules_seen = (len(sys.modules),
                                  sorted({name.partition(".")[0] for name in list(sys.modules)}))
        return list(self._modules_seen[1])

    def write(self, doc: Mapping[str, Any], *, final: bool = False) -> bool:
        """Replace the file with doc, unless doc differs from the last one written only in
        `updated` and that one is younger than REFRESH_S (the last document, `final`, is
        always written). True when the file was replaced. A failure is logged, except a full
        disk at the last write (the agent is stopping, and said so before)."""
        updated = doc.get("updated", 0)
        content = json.dumps({k: v for k, v in doc.items() if k != "updated"},
                             sort_keys=True).encode()
        if (not final and content == self._written
                and 0 <= float(updated) - self._written_at < REFRESH_S):
            return False
        try:
            # Without indent json uses its C encoder: four times faster on this document
            # (0.07 ms against 0.29), every 5 s; `micro-agent status` prints it indented. The
            # file is the compared text with `updated` added last: encoded once, not twice.
            head = content[:-1] + (b", " if len(content) > 2 else b"")
            replace_file(self.path, head + b'"updated": ' + json.dumps(updated).encode() + b"}",
                         tmp=self.path.with_suffix(".tmp"), sync=False, mode=0o644)
        except OSError as err:
            self._written = None  # try again at the next document
            if err.errno != errno.ENOSPC or not final:
                log.warning("status: cannot write %s: %s", self.path, err)
            return False
        self._written = content
        self._written_at = float(updated)
        return True
