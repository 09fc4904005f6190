"""The module twin's reported properties (agent.config.reported) from what runs: the
effective configuration, latest_state and latest_invalid_fields, each collector's state, the
counters (collected per collector, dropped by reason, the outbox's), the agent's version and
the outbox depth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent import __version__
from agent.collectors.base import Collector
from agent.config import Config, build_reported
from agent.outbox import Outbox


def reported_document(config: Config, invalid_reasons: Mapping[str, str],
                      collectors: Mapping[str, Collector], dropped: Mapping[str, int],
                      outbox: Outbox,
                      more_counters: Mapping[str, Mapping[str, int]] | None = None,
                      stats: Mapping[str, Mapping[str, Any]] | None = None,
                      ) -> dict[str, Any]:
    """`dropped`: the drops counted since the agent started, by reason (DropTotals).
    `more_counters`: further groups of counters (the clock's jumps, the uplink's refusals).
    `stats`: each collector's stats() when the caller has read them already (status.json
    holds them too); read here otherwise."""
    if stats is None:
        stats = {name: c.stats() for name, c in collectors.items()}
    collected = {name: int(stats[name].get("collected", 0)) for name in collectors}
    depth = sum(d.count for d in outbox.depth().values())
    counters = {"collected": collected, "dropped": dict(dropped),
                "outbox": dict(vars(outbox.counters())),
                **{name: dict(group) for name, group in (more_counters or {}).items()}}
    states = {name: c.state for name, c in collectors.items()}
    return build_reported(config, invalid_reasons, states, counters,
                          agent_version=__version__, outbox_depth=depth)
