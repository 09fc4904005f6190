"""NetworkActivity and ListeningPorts over the socket table (native/sock_diag.c: sock_diag, or
/proc/net where sock_diag is missing) and, for NetworkActivity, the audit socket's connect,
accept and bind events when audit is in use (agent.collectors.audit_source).

NetworkActivity takes a snapshot every SNAPSHOT_EVERY_MS and writes the `conn` events of the
difference (opened, closed with their byte counters); connections that open and close between
two snapshots are seen only through audit. ListeningPorts takes one snapshot per interval.

NetworkActivity also captures DNS responses (agent.native.dns: a packet socket's ring, sized by
NetworkActivity_PacketBufferSize, on the interfaces of NetworkActivity_Devices): they are its
`dns` events, through its own aggregator and lane, and fill the address -> name cache that the
aggregator consults to give `conn` and `net` entries their `host` (docs/sources/dns.md).
The ring is drained at every tick and before every flush, ahead of the socket snapshot, so
that an answer is in the cache before the connection it led to is aggregated.
"""

from __future__ import annotations

import errno
from collections import Counter
from typing import Any, ClassVar

from agent.collectors.audit_source import audit_source
from agent.collectors.base import Collector, Lane
from agent.collectors.privileges import unavailable_without
from agent.config import CollectorState
from agent.interface_addresses import interface_addresses
from agent.native.dns import DnsCapture, DnsOptions
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
    # Asked once a second (the drop ledger): two fields, not the whole stats struct.
    incomplete, overflow = table.counters("incomplete", "overflow")
    return Counter({"incomplete_snapshots": incomplete, "socket_overflow": overflow})


def dns_drops(capture: DnsCapture) -> Counter[str]:
    """What the DNS capture could not see: packets the kernel dropped with the ring full."""
    return Counter({"dns_ring_drops": capture.stats().ring_drops})


# The counters of the capture in the collector's stats (Statistics, `micro-agent status`).
DNS_MALFORMED = ("bad_ip", "bad_transport", "tcp_partial", "truncated", "bad_label",
                 "long_name", "bad_pointer", "pointer_loop", "bad_rdata")


class NetworkActivityCollector(Collector):
    name = "NetworkActivity"
    kind = "network"
    accept = ("conn", "net", "dns")
    uses_audit: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table: SocketTable | None = None
        self.dns: DnsCapture | None = None
        self.raw = EventSink()
        self._next_snapshot = 0
        self._next_devices = 0
        self._closed_drops: Counter[str] = Counter()
        self._dns_closed: Counter[str] = Counter()
        self._closing_dns = False  # stopped: flush() closes the capture

    def start(self) -> CollectorState:
        # skip_quiet_tcp: while no TCP connection exists and none was opened, a snapshot
        # leaves out the TCP dump (the kernel's walk of its whole established hash table,
        # most of an idle snapshot's cost); the first open brings the next dump back.
        self.table = _open_table(SocketTableOptions(first_existing=False, skip_quiet_tcp=True))
        self._next_snapshot = 0
        sources = [self.table.source]
        reasons = [self.table.source_reason]
        audit = audit_source(self.env)
        if audit.subscribe(self, net_rules=True):
            sources.append("audit")
        reasons.append(f"audit: {audit.state}")
        reasons.append(_owner_reason())
        reasons.append(self._apply_devices())
        dns_reason = self._open_dns()
        if self.dns is not None:
            sources.append("packet")
        reasons.append(dns_reason)
        return CollectorState.running("+".join(sources), "; ".join(r for r in reasons if r))

    def _dns_wanted(self) -> tuple[tuple[str, ...], int]:
        assert self.config is not None
        section = self.config.network_activity
        return (tuple(section.devices), int(section.packet_buffer_size))

    def _open_dns(self) -> str:
        """Opens the DNS capture on NetworkActivity_Devices with a ring of
        NetworkActivity_PacketBufferSize and links the aggregator to its cache; returns what
        the state's reason says of it ("" when all is as configured)."""
        self._close_dns()
        devices, ring_bytes = self._dns_wanted()
        try:
            capture = DnsCapture(DnsOptions(ring_bytes=min(ring_bytes, (1 << 32) - 1),
                                            devices=devices))
        except OSError as err:
            code = errno.errorcode.get(err.errno or 0, str(err.errno))
            lack = " (no CAP_NET_RAW)" if err.errno == errno.EPERM else ""
            return f"dns: unavailable: {code}: {err.strerror}{lack}"
        assert self.aggregator is not None
        self.dns = capture
        self.aggregator.use_hosts(capture)
        # Drained as the kernel hands each block over (the socket is readable then), not on
        # the 1 s tick: the ring needs to hold only what arrives between two turns of the loop
        # (docs/sources/dns.md), which lets the default ring be 4 blocks, not a second's 16.
        self.env.watch(capture.fileno(), self._on_dns_readable)
        s = capture.stats()
        notes = []
        if s.ring_clamped:
            notes.append(f"ring {s.ring_bytes} bytes (PacketBufferSize {ring_bytes} rounded "
                         "to whole blocks within 2..1024)")
        if s.devices_missing:
            notes.append(f"{s.devices_missing} of the devices not found")
        return f"dns: {'; '.join(notes)}" if notes else ""

    def _close_dns(self) -> None:
        self._closing_dns = False
        if self.dns is not None:
            self.env.unwatch(self.dns.fileno())
            self._dns_closed.update(dns_drops(self.dns))
            for name, value in self._dns_counters(self.dns).items():
                self._dns_closed[f"closed_{name}"] += value
            self.dns.close()  # unlinks the aggregator first
            self.dns = None

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
        if self.lane is None:
            self._close_dns()  # a start that failed: no flush follows
        else:
            # The pipeline flushes next: the entries leaving then still ask the cache for
            # their host (those made before the answer's block was read), and flush() closes it.
            self._closing_dns = True
        if self.table is not None:
            self._closed_drops.update(table_drops(self.table))
            self.table.close()
            self.table = None

    def _on_dns_readable(self) -> None:
        if self.lane is not None:
            self._drain_dns(self.lane)

    def _drain_dns(self, lane: Lane) -> None:
        if self.dns is not None:
            pump(self.dns.drain, self.raw, lambda batches: self.route_all(batches, lane),
                 seal=True)

    def tick(self, now: int, lane: Lane) -> None:
        audit_source(self.env).tick(now)
        self._drain_dns(lane)
        if now >= self._next_devices:
            self._next_devices = now + DEVICES_EVERY_MS
            self._apply_devices()
        if self.table is None or now < self._next_snapshot:
            return
        self._next_snapshot = now + SNAPSHOT_EVERY_MS
        self.table.snapshot()
        pump(self.table.changes, self.raw, lambda batches: self.route_all(batches, lane),
             seal=True)

    def flush(self, lane: Lane) -> None:
        self._drain_dns(lane)
        super().flush(lane)
        if self._closing_dns:
            self._close_dns()

    def drops(self) -> dict[str, int]:
        current = table_drops(self.table) if self.table is not None else Counter()
        if self.dns is not None:
            current += dns_drops(self.dns)
        closed = Counter({"dns_ring_drops": self._dns_closed["dns_ring_drops"]})
        return dict(self._closed_drops + closed + current)

    @staticmethod
    def _dns_counters(capture: DnsCapture) -> dict[str, int]:
        s = capture.stats()
        return {"dns_messages": s.messages, "dns_events": s.events,
                "dns_malformed": sum(s[k] for k in DNS_MALFORMED),
                "dns_unrelated": s.unrelated, "dns_hosts_evicted": s.hosts_evicted}

    def stats(self) -> dict[str, int]:
        out = super().stats()
        current = self._dns_counters(self.dns) if self.dns is not None else {}
        for name in ("dns_messages", "dns_events", "dns_malformed", "dns_unrelated",
                     "dns_hosts_evicted"):
            out[name] = self._dns_closed[f"closed_{name}"] + current.get(name, 0)
        out["dns_hosts"] = self.dns.stats().hosts if self.dns is not None else 0
        if self.aggregator is not None:
            out["hosts"] = self.aggregator.stats().hosts
        return out
