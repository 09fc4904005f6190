"""The agent's one drop ledger. Every source of drops (a collector, a shared source, a lane's
sink) keeps running totals by reason; the loop hands them here once a second, and here alone
the increase since they were last seen is computed: it goes to the outbox's DropLedger (the
next envelope's `drops`) and into the totals since the agent started (the Statistics event and
the reported properties' `dropped`). Reasons are `<source>.<reason>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from agent.envelope import DropLedger


class HoldsPendingDrops(Protocol):
    """The outbox: its ledger is what the next stored batch's envelope reports. Looked up at
    each use, because the outbox replaces it when it rolls a failed removal back."""

    drops: DropLedger


class DropTotals:
    def __init__(self, pending: HoldsPendingDrops) -> None:
        self._pending = pending
        self._seen: dict[str, dict[str, int]] = {}
        self._totals: dict[str, int] = {}

    def observe(self, source: str, totals: Mapping[str, int]) -> None:
        """`source`'s running totals by reason. The increase since the last observe of the
        same source and reason is counted; a total that went down (a counter started again)
        is taken as the new base, and counts nothing."""
        seen = self._seen.setdefault(source, {})
        for reason, total in totals.items():
            increase = total - seen.get(reason, 0)
            seen[reason] = total
            if increase > 0:
                key = f"{source}.{reason}"
                self._pending.drops.add(key, increase)
                self._totals[key] = self._totals.get(key, 0) + increase

    def totals(self) -> dict[str, int]:
        """Every drop counted since the agent started, by `<source>.<reason>`."""
        return dict(self._totals)
