"""The periodic inventory collectors: each takes one snapshot of the device per interval with
a gatherer of agent.inventory (docs/inventory.md). A gatherer's errors are counted and logged
(once per distinct message); they and its skipped parts are the reason in the collector's
state after each snapshot, a refusal with the capability that is missing ("/etc/shadow:
Permission denied (no CAP_DAC_READ_SEARCH)"), so that a collector that sees less says so."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from agent.collectors.base import Collector
from agent.collectors.privileges import NETLINK_REFUSED, READ_REFUSED, explain_refusal
from agent.config import BaselineConfig, CollectorState, SystemInformationConfig
from agent.inventory import Snapshot, baseline, firewall, now_ms, sbom, sysinfo, under, users
from agent.native.nftables import NftReader

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
        self.account(snap)
        return snap.events

    def account(self, snap: Snapshot) -> None:
        """A snapshot's counters, logged errors and the state's reason."""
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
        # The last snapshot and the nftables generation it was taken at. The reader is the
        # core's (native/nftables.c): it runs in this process, holds no socket and no buffer
        # between snapshots.
        self._last: tuple[int, Snapshot] | None = None
        self._nft = NftReader()

    def gather(self) -> Snapshot:
        generation = self._unchanged_mark()
        if self._last is not None and generation is not None and self._last[0] == generation:
            ts = now_ms()
            last = self._last[1]
            self.counters["unchanged"] += 1
            return Snapshot([{**event, "ts": ts} for event in last.events], [],
                            list(last.skipped))
        snap = firewall.gather(self.env.root, self._nft)
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
        return self._nft.generation()


class SBoMCollector(InventoryCollector):
    name = "SBoM"
    accept = ("pkg",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Unchanged status files are not parsed again (sbom.StatusCache).
        self._status = sbom.StatusCache()

    def gather(self) -> Snapshot:
        return sbom.gather(self.env.root, cache=self._status)

    def snapshot_batch(self, now: int) -> bytes | None:
        # Packed as gathered: a thousand packages as dicts all at once stayed in the RSS.
        snap, batch = sbom.gather_batch(self.env.root, cache=self._status)
        self.account(snap)
        return batch


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

