"""The periodic inventory collectors: each takes one snapshot of the device per interval with
a gatherer of agent.inventory (docs/inventory.md). A gatherer's errors are counted and logged
(once per distinct message); they and its skipped parts are the reason in the collector's
state after each snapshot, a refusal with the capability that is missing ("/etc/shadow:
Permission denied (no CAP_DAC_READ_SEARCH)"), so that a collector that sees less says so."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgpack

from agent.collectors.base import Collector
from agent.collectors.privileges import NETLINK_REFUSED, READ_REFUSED, explain_refusal
from agent.config import BaselineConfig, CollectorState, SystemInformationConfig
from agent.inventory import Snapshot, baseline, now_ms, sbom, sysinfo, under, users
from agent.inventory.nft_generation import ruleset_generation

log = logging.getLogger("agent.collectors")

# Errors logged per collector before it only counts them (a broken file every interval must
# not fill the log).
MAX_LOGGED_ERRORS = 20
# The state's reason names at most this many distinct problems, each cut to REASON_ITEM_CHARS.
REASON_ITEMS = 6
REASON_ITEM_CHARS = 160


class InventoryCollector(Collector):
    periodic: ClassVar[bool] = True
    # Which capability a refusal met by the gatherer means (privileges.explain_refusal).
    refusals: ClassVar[Mapping[int, str]] = READ_REFUSED

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._logged: set[str] = set()
        self.last_skipped: list[str] = []

    def gather(self) -> Snapshot:
        raise NotImplementedError

    def snapshot(self, now: int) -> Iterable[dict[str, Any]]:
        snap = self.gather()
        self.counters["snapshots"] += 1
        self.counters["errors"] += len(snap.errors)
        self.last_skipped = list(snap.skipped)
        errors = [explain_refusal(error, refusals=self.refusals) for error in snap.errors]
        for error in errors:
            if error not in self._logged and len(self._logged) < MAX_LOGGED_ERRORS:
                self._logged.add(error)
                log.warning("%s: %s", self.name, error)
        if self.state.state == "running":
            problems = [*errors, *self.shortfalls(snap.events), *snap.skipped]
            self.state = CollectorState.running(self.state.source, _reason(problems))
        return snap.events

    def shortfalls(self, events: list[dict[str, Any]]) -> list[str]:
        """What the events themselves say could not be seen (Baseline: checks in error)."""
        return []


def _reason(problems: list[str]) -> str:
    distinct = list(dict.fromkeys(problems))
    shown = [p if len(p) <= REASON_ITEM_CHARS else p[:REASON_ITEM_CHARS - 3] + "..."
             for p in distinct[:REASON_ITEMS]]
    if len(distinct) > REASON_ITEMS:
        shown.append(f"{len(distinct) - REASON_ITEMS} more")
    return "; ".join(shown)


# A child's snapshot that takes longer than this is abandoned (counted as an error).
CHILD_TIMEOUT_S = 120


def gather_in_child(name: str, root: Path, *args: str) -> Snapshot:
    """A gatherer run by `python3 -m agent.inventory` in a child process (see its docstring:
    what it needs stays out of the agent's memory between two snapshots)."""
    # Loaded by the first child only (about 2.5 MB of RSS with its imports).
    import subprocess

    snap = Snapshot()
    try:
        run = subprocess.run([sys.executable, "-m", "agent.inventory", name, str(root), *args],
                             capture_output=True, timeout=CHILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        snap.error(name, f"the gatherer's child process failed: {err}")
        return snap
    if run.returncode != 0:
        last = run.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        snap.error(name, f"the gatherer's child exited {run.returncode}: {last[0][:200]}")
        return snap
    try:
        doc = msgpack.unpackb(run.stdout, raw=False)
        snap.events = list(doc["events"])
        snap.errors = list(doc["errors"])
        snap.skipped = list(doc["skipped"])
        snap.volatile = bool(doc.get("volatile", False))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as err:
        snap.error(name, f"the gatherer's child wrote no snapshot: {err}")
    return snap


class SystemInformationCollector(InventoryCollector):
    name = "SystemInformation"
    accept = ("sysinfo", "netif")

    def gather(self) -> Snapshot:
        assert self.config is not None
        section = self.config.system_information
        assert isinstance(section, SystemInformationConfig)
        overrides = {
            "HardwareVendor": section.hardware_vendor,
            "HardwareModel": section.hardware_model,
            "HardwareSerialNumber": section.hardware_serial_number,
            "FirmwareVendor": section.firmware_vendor,
            "FirmwareVersion": section.firmware_version,
        }
        # In this process: its two rtnetlink dumps are small (agent.interface_addresses).
        return sysinfo.gather(self.env.root, overrides=overrides)


class LocalUsersCollector(InventoryCollector):
    name = "LocalUsers"
    accept = ("user", "group")

    def gather(self) -> Snapshot:
        return users.gather(self.env.root)


class FirewallCollector(InventoryCollector):
    name = "Firewall"
    accept = ("fwchain", "fwrule")
    # nfnetlink requests (nftables, even dumps) need CAP_NET_ADMIN; /proc/net/ip_tables_names
    # is 0440 root.
    refusals: ClassVar[Mapping[int, str]] = {**READ_REFUSED, **NETLINK_REFUSED}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The last snapshot and the nftables generation it was taken at (nft_generation).
        self._last: tuple[int, Snapshot] | None = None

    def gather(self) -> Snapshot:
        generation = self._unchanged_mark()
        if self._last is not None and generation is not None and self._last[0] == generation:
            ts = now_ms()
            last = self._last[1]
            self.counters["unchanged"] += 1
            return Snapshot([{**event, "ts": ts} for event in last.events], [],
                            list(last.skipped))
        snap = gather_in_child("firewall", self.env.root)
        # The generation was read before the dump: a change while it ran is seen next time.
        self._last = None
        if generation is not None and not snap.errors and not snap.volatile:
            self._last = (generation, snap)
        return snap

    def _unchanged_mark(self) -> int | None:
        """The nftables ruleset generation when it alone says whether the rules changed:
        None while legacy x_tables tables are loaded (no change mark; read every time)."""
        for names in ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"):
            try:
                if under(self.env.root, names).read_bytes().strip():
                    return None
            except FileNotFoundError:
                continue
            except OSError:
                return None
        return ruleset_generation()


class SBoMCollector(InventoryCollector):
    name = "SBoM"
    accept = ("pkg",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Unchanged status files are not parsed again (sbom.StatusCache).
        self._status = sbom.StatusCache()

    def gather(self) -> Snapshot:
        return sbom.gather(self.env.root, cache=self._status)


class BaselineCollector(InventoryCollector):
    name = "Baseline"
    accept = ("baseline",)

    def gather(self) -> Snapshot:
        assert self.config is not None
        section = self.config.baseline
        assert isinstance(section, BaselineConfig)
        return baseline.gather(self.env.root, section.groups_disabled, section.checks_disabled)

    def shortfalls(self, events: list[dict[str, Any]]) -> list[str]:
        """Checks that could not run (res Error), by reason: "2 checks in error: /etc/shadow:
        Permission denied (no CAP_DAC_READ_SEARCH)"."""
        why = Counter(explain_refusal(str(e.get("why", "")), refusals=self.refusals)
                      for e in events if e.get("res") == "Error")
        return [f"{n} check{'s' if n > 1 else ''} in error: {reason}" for reason, n in why.items()]

