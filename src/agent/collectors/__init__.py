"""The collectors, one module per kind, each thin over the core's sources (docs/collectors.md).
`build_collectors(env)` makes one of each name of agent.config.COLLECTORS."""

from __future__ import annotations

from typing import Any, ClassVar

from agent.collectors.agent_state import HeartbeatCollector, StatisticsCollector
from agent.collectors.base import Collector, Environment
from agent.collectors.file_system import FileSystemCollector
from agent.collectors.inventory import (
    BaselineCollector,
    FirewallCollector,
    LocalUsersCollector,
    SBoMCollector,
    SystemInformationCollector,
)
from agent.collectors.log import LogCollector
from agent.collectors.login import LoginCollector
from agent.collectors.network import ListeningPortsCollector, NetworkActivityCollector
from agent.collectors.peripheral import PeripheralCollector
from agent.collectors.process import ProcessCollector
from agent.config import COLLECTORS, CollectorState


class NotBuiltCollector(Collector):
    """A collector name the twin knows that this agent does not collect yet: reported as
    unavailable with the reason, never silently absent."""

    reason: ClassVar[str] = "not built in this version of the agent"

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name  # type: ignore[misc]

    def start(self) -> CollectorState:
        return CollectorState.unavailable(self.reason)


CLASSES: dict[str, type[Collector]] = {
    c.name: c
    for c in (
        ProcessCollector,
        NetworkActivityCollector,
        LoginCollector,
        ListeningPortsCollector,
        SystemInformationCollector,
        LocalUsersCollector,
        FirewallCollector,
        SBoMCollector,
        BaselineCollector,
        HeartbeatCollector,
        StatisticsCollector,
        FileSystemCollector,
        PeripheralCollector,
        LogCollector,
    )
}


def build_collectors(env: Environment) -> list[Collector]:
    out: list[Collector] = []
    for name in COLLECTORS:
        cls = CLASSES.get(name)
        out.append(cls(env) if cls is not None else NotBuiltCollector(name, env))
    return out


__all__ = ["CLASSES", "Collector", "Environment", "build_collectors"]
