"""The periodic inventory collectors: each takes one snapshot of the device per interval with
a gatherer of agent.inventory (docs/inventory.md). A gatherer's errors are counted and logged
(once per distinct message) and its skipped parts are reported in the collector's state."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from agent.collectors.base import Collector
from agent.config import BaselineConfig, SystemInformationConfig
from agent.inventory import Snapshot, baseline, firewall, sbom, sysinfo, users

log = logging.getLogger("agent.collectors")

# Errors logged per collector before it only counts them (a broken file every interval must
# not fill the log).
MAX_LOGGED_ERRORS = 20


class InventoryCollector(Collector):
    periodic: ClassVar[bool] = True

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
        for error in snap.errors:
            if error not in self._logged and len(self._logged) < MAX_LOGGED_ERRORS:
                self._logged.add(error)
                log.warning("%s: %s", self.name, error)
        return snap.events


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
        return sysinfo.gather(self.env.root, overrides={k: v for k, v in overrides.items() if v})


class LocalUsersCollector(InventoryCollector):
    name = "LocalUsers"
    accept = ("user", "group")

    def gather(self) -> Snapshot:
        return users.gather(self.env.root)


class FirewallCollector(InventoryCollector):
    name = "Firewall"
    accept = ("fwchain", "fwrule")

    def gather(self) -> Snapshot:
        return firewall.gather(self.env.root)


class SBoMCollector(InventoryCollector):
    name = "SBoM"
    accept = ("pkg",)

    def gather(self) -> Snapshot:
        return sbom.gather(self.env.root)


class BaselineCollector(InventoryCollector):
    name = "Baseline"
    accept = ("baseline",)

    def gather(self) -> Snapshot:
        assert self.config is not None
        section = self.config.baseline
        assert isinstance(section, BaselineConfig)
        return baseline.gather(self.env.root, section.groups_disabled, section.checks_disabled)

