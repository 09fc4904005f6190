"""Process: programs started (`exec`) and processes ended (`exit`), from the richest source
available (Process_Mode):

- 4 Audit: the audit socket's execve/execveat records (full argv, uid, exe, cwd, ppid; owner of
  audit, or beside auditd on its multicast group). No exits: the agent adds no exit rules.
- 2 Netlink: the proc connector (cn_proc exec and exit, details read from /proc/PID at once).
- 3 Polling: /proc walked every Process_PollingInterval; starts and ends that happen between
  two walks are not seen (the reason this is the last resort).
- 1 Auto: audit, else the proc connector, else polling; the state says which and why.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from agent.collectors.audit_source import audit_source
from agent.collectors.base import Collector, Lane
from agent.collectors.privileges import NETLINK_REFUSED, explain_refusal, unavailable_without
from agent.config import CollectorState, ProcessConfig, ProcessMode
from agent.native.proc_connector import ProcConnector
from agent.native.proc_scan import ProcScanner, ProcScanOptions
from agent.native.sink import EventSink, pump


class ProcessCollector(Collector):
    name = "Process"
    kind = "process"
    accept = ("exec", "exit")
    uses_audit: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = ""
        self.raw = EventSink()
        self.cnproc: ProcConnector | None = None
        self.poller: ProcScanner | None = None
        self._next_poll = 0
        # Drops of sources closed since (a restart opens new ones, whose counters start at 0).
        self._closed_drops: Counter[str] = Counter()

    def _settings(self) -> ProcessConfig:
        assert self.config is not None
        section = self.config.process
        assert isinstance(section, ProcessConfig)
        return section

    def start(self) -> CollectorState:
        mode = self._settings().mode
        why: list[str] = []
        if mode in (ProcessMode.AUTO, ProcessMode.AUDIT):
            audit = audit_source(self.env)
            if audit.subscribe(self, exec_rules=True):
                self.source = "audit"
                return CollectorState.running("audit", audit.state)
            audit.unsubscribe(self)
            why.append(f"audit: {audit.state}")
            if mode is ProcessMode.AUDIT:
                return CollectorState.unavailable("; ".join(why))
        if mode in (ProcessMode.AUTO, ProcessMode.NETLINK):
            try:
                self.cnproc = ProcConnector()
            except OSError as err:
                # "proc connector listen: Operation not permitted (no CAP_NET_ADMIN)"
                why.append(explain_refusal(err.strerror or str(err), err.errno, NETLINK_REFUSED))
                if mode is ProcessMode.NETLINK:
                    return CollectorState.unavailable("; ".join(why))
            else:
                self.source = "cnproc"
                self.env.watch(self.cnproc.fileno(), self._on_cnproc)
                return CollectorState.running("cnproc", _reason(why))
        self.poller = ProcScanner(ProcScanOptions(changes=True))
        # The first walk learns what runs now: what starts from here on is new.
        pump(self.poller.scan, EventSink(), _discard, seal=True)
        self.source = "polling"
        self._next_poll = 0
        return CollectorState.running("polling", _reason(why))

    def stop(self) -> None:
        if self.source == "audit":
            audit_source(self.env).unsubscribe(self)
        if self.cnproc is not None:
            self.env.unwatch(self.cnproc.fileno())
            self._on_cnproc()
            if self.cnproc.probe():
                self._on_cnproc()  # the last burst's losses, counted before the counters close
            self._closed_drops.update(self._source_drops())
            self.cnproc.close()
            self.cnproc = None
        if self.poller is not None:
            self._closed_drops.update(self._source_drops())
            self.poller.close()
            self.poller = None
        self._pass_raw(seal=True)
        self.source = ""

    def _pass_raw(self, seal: bool = False) -> None:
        if self.lane is None:
            return
        self.route_all(self.raw.seal() if seal else self.raw.take(), self.lane)

    def _on_cnproc(self) -> None:
        if self.cnproc is None or self.lane is None:
            return
        lane = self.lane
        pump(self.cnproc.drain, self.raw, lambda batches: self.route_all(batches, lane))

    def tick(self, now: int, lane: Lane) -> None:
        if self.source == "audit":
            audit_source(self.env).tick(now)
        elif self.cnproc is not None and self.cnproc.probe():
            # An overrun's losses on a CPU that went quiet after it are counted only once
            # that CPU sends again: the probes make it send (docs/sources/proc-connector.md).
            self._on_cnproc()
        elif self.poller is not None and now >= self._next_poll:
            self._next_poll = now + max(1, self._settings().polling_interval_us // 1000)
            pump(self.poller.scan, self.raw, lambda batches: self.route_all(batches, lane))
        self._pass_raw(seal=True)

    def tick_interval(self) -> float:
        if self.poller is not None:
            return max(0.01, min(1.0, self._settings().polling_interval_us / 1e6))
        return 1.0

    def _source_drops(self) -> dict[str, int]:
        if self.cnproc is not None:
            s = self.cnproc.stats()
            # gone, partial: the exec arrived, but its command line (or part of its details)
            # did not, because the process ended before /proc/PID was read; in an exec storm
            # of short-lived programs that is most of them, and uncounted it looked like loss
            # without a reason (docs/sources/proc-connector.md, "Short-lived processes").
            # argv_truncated, oversize: the command line arrived cut to the source's bounds.
            return {"cnproc_enobufs": s.enobufs, "cnproc_lost": s.lost, "cnproc_malformed": s.malformed,
                    "cnproc_dropped": s.dropped, "cnproc_gone": s.gone, "cnproc_partial": s.partial,
                    "cnproc_argv_truncated": s.argv_truncated, "cnproc_oversize": s.oversize}
        if self.poller is not None:
            ps = self.poller.stats()
            return {"polling_dropped": ps.dropped, "polling_untracked": ps.untracked}
        return {}

    def drops(self) -> dict[str, int]:
        total = self._closed_drops + Counter(self._source_drops())
        sink = self.raw.stats()
        total["sink_full"] = sink.dropped_full
        total["too_large"] = sink.dropped_encode
        return dict(total)


def _reason(why: list[str]) -> str:
    """The state's reason for the proc connector and polling, which read the details of each
    process from /proc/PID: without CAP_SYS_PTRACE the kernel refuses exe and cwd of
    processes of other users (the audit source has them from its records)."""
    blind = unavailable_without("exe and cwd of other users' processes", "CAP_SYS_PTRACE")
    return "; ".join(why + ([blind] if blind else []))


def _discard(batches: list[bytes]) -> None:
    """What the first walk finds runs already: not new."""


def snapshot(lane: Lane) -> None:
    """One `process` event per running process into the lane (`micro-agent collect Process`):
    the /proc scanner in snapshot mode."""
    with ProcScanner() as scanner:
        pump(scanner.scan, lane.sink, lane.spill)
