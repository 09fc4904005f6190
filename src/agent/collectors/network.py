"""NetworkActivity and ListeningPorts over the socket table (native/sock_diag.c: sock_diag, or
/proc/net where sock_diag is missing) and, for NetworkActivity, the audit socket's connect,
accept and bind events when audit is in use (agent.collectors.audit_source).

NetworkActivity takes a snapshot every SNAPSHOT_EVERY_MS and writes the `conn` events of the
difference (opened, closed with their byte counters); connections that open and close between
two snapshots are seen only through audit. ListeningPorts takes one snapshot per interval.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from agent.collectors.audit_source import audit_source
from agent.collectors.base import Collector, Lane
from agent.collectors.privileges import unavailable_without
from agent.config import CollectorState
from agent.interface_addresses import interface_addresses
from agent.native.sink import EventSink, pump
from agent.native.sock_diag import SocketTable, SocketTableOptions

SNAPSHOT_EVERY_MS = 2000
DEVICES_EVERY_MS = 30_000


def _open_table(options: SocketTableOptions | None = None) -> SocketTable:
    return SocketTable(options or SocketTableOptions())


def _owner_reason() -> str:
    """A socket's owner is found by listing /proc/PID/fd (a directory of mode 0500 of the
    process's user: CAP_DAC_READ_SEARCH) and reading its links (CAP_SYS_PTRACE): without
    either, sockets of other users' processes have no pid, comm or exe."""
    return unavailable_without("owners of other users' sockets", "CAP_SYS_PTRACE",
                               "CAP_DAC_READ_SEARCH")


class ListeningPortsCollector(Collector):
    name = "ListeningPorts"
    accept = ("listen",)
    periodic: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table: SocketTable | None = None
        self._closed_drops: Counter[str] = Counter()
        self._listen_before = 0  # listen events of tables closed since
        self._table_stats: dict[str, int] = {}

    def start(self) -> CollectorState:
        self.table = _open_table(SocketTableOptions(first_existing=False))
        reasons = [self.table.source_reason, _owner_reason()]
        return CollectorState.running(self.table.source, "; ".join(r for r in reasons if r))

    def stop(self) -> None:
        if self.table is not None:
            self.stats()
            self._listen_before = self._table_stats.get("collected", 0)
            self._closed_drops.update(table_drops(self.table))
            self.table.close()
            self.table = None

    def collect(self, now: int, lane: Lane) -> None:
        if self.table is None:
            return
        self.table.snapshot()
        self.counters["snapshots"] += 1
        # The table writes `listen` events straight into the lane's sink (no aggregation).
        pump(self.table.listening, lane.sink, lane.spill)

    def drops(self) -> dict[str, int]:
        current = table_drops(self.table) if self.table is not None else Counter()
        return dict(self._closed_drops + current)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        if self.table is not None:
            s = self.table.stats()
            self._table_stats = {"collected": self._listen_before + s.listen_events,
                                 "owner_unknown": s.owner_unknown}
        out.update(self._table_stats)
        return out


def table_drops(table: SocketTable) -> Counter[str]:
    """What a socket table could not see: snapshots cut short, sockets beyond its bound."""
    s = table.stats()
    return Counter({"incomplete_snapshots": s.incomplete, "socket_overflow": s.overflow})


class NetworkActivityCollector(Collector):
    name = "NetworkActivity"
    kind = "network"
    accept = ("conn", "net")
    uses_audit: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table: SocketTable | None = None
        self.raw = EventSink()
        self._next_snapshot = 0
        self._next_devices = 0
        self._closed_drops: Counter[str] = Counter()

    def start(self) -> CollectorState:
        self.table = _open_table(SocketTableOptions(first_existing=False))
        self._next_snapshot = 0
        sources = [self.table.source]
        reasons = [self.table.source_reason]
        audit = audit_source(self.env)
        if audit.subscribe(self, net_rules=True):
            sources.append("audit")
        reasons.append(f"audit: {audit.state}")
        reasons.append(_owner_reason())
        reasons.append(self._apply_devices())
        return CollectorState.running("+".join(sources), "; ".join(r for r in reasons if r))

    def _apply_devices(self) -> str:
        """NetworkActivity_Devices: only connections whose local address belongs to one of
        these interfaces are reported (audit's connect events carry no local address and
        always pass). Addresses are read again every DEVICES_EVERY_MS (DHCP moves them)."""
        assert self.config is not None and self.aggregator is not None
        devices = tuple(getattr(self.config.network_activity, "devices", ()))
        if not devices:
            self.aggregator.filter_local_addresses(None)
            return ""
        found, missing = interface_addresses(devices)
        self.aggregator.filter_local_addresses(sorted(found))
        text = f"devices {','.join(devices)}: {len(found)} local addresses"
        if missing:
            text += f"; no interface named {','.join(missing)}"
        return text

    def stop(self) -> None:
        audit_source(self.env).unsubscribe(self)
        if self.table is not None:
            self._closed_drops.update(table_drops(self.table))
            self.table.close()
            self.table = None

    def tick(self, now: int, lane: Lane) -> None:
        audit_source(self.env).tick(now)
        if now >= self._next_devices:
            self._next_devices = now + DEVICES_EVERY_MS
            self._apply_devices()
        if self.table is None or now < self._next_snapshot:
            return
        self._next_snapshot = now + SNAPSHOT_EVERY_MS
        self.table.snapshot()
        pump(self.table.changes, self.raw, lambda batches: self.route_all(batches, lane),
             seal=True)

    def drops(self) -> dict[str, int]:
        current = table_drops(self.table) if self.table is not None else Counter()
        return dict(self._closed_drops + current)
