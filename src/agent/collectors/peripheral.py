"""Peripheral: devices plugged in and out (docs/sources/uevent.md): USB devices and their
interfaces, block devices (a USB stick's disk and partitions) and network interfaces added
and removed, from the kernel's uevents; a link's carrier up and down (a cable plugged or
pulled) from rtnetlink. One handle of the core reads both sockets; the events are `periph`,
merged by the aggregator's peripheral kind (a device plugged in and out again, a flapping
carrier: one entry with hits).

A uevent not sent by the kernel (a local root process can multicast one) is counted as
`spoofed`, never reported as a device: its count is in the collector's statistics, and a
non-zero count is in the state's reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from agent.collectors.base import Collector, Lane
from agent.collectors.privileges import NETLINK_REFUSED, explain_refusal
from agent.config import CollectorState
from agent.native.peripheral import PeripheralOptions, PeripheralSource
from agent.native.sink import EventSink, pump

# The source's counters surfaced in the collector's statistics (the rest are in drops()).
SOURCE_COUNTERS = ("uevents", "usb_device", "usb_interface", "block", "net", "carrier",
                   "ignored", "spoofed", "bad_fields", "sysfs_missing", "link_overflow")


class PeripheralCollector(Collector):
    name = "Peripheral"
    kind = "peripheral"
    accept = ("periph",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw = EventSink()
        self.source: PeripheralSource | None = None
        self._closed_drops: Counter[str] = Counter()
        self._closed_counters: Counter[str] = Counter()

    def start(self) -> CollectorState:
        try:
            self.source = PeripheralSource()
        except OSError as err:
            return CollectorState.unavailable(
                explain_refusal(err.strerror or str(err), err.errno, NETLINK_REFUSED))
        for fd in self.source.filenos():
            self.env.watch(fd, self._on_readable)
        return CollectorState.running("uevent+rtnetlink")

    def stop(self) -> None:
        if self.source is None:
            return
        for fd in self.source.filenos():
            self.env.unwatch(fd)
        self._on_readable()
        self._pass_raw()
        self._closed_drops.update(self._source_drops())
        self._closed_counters.update(self._source_counters())
        self.source.close()
        self.source = None

    def _on_readable(self) -> None:
        if self.source is None or self.lane is None:
            return
        lane = self.lane
        pump(self.source.drain, self.raw, lambda batches: self.route_all(batches, lane))

    def _pass_raw(self) -> None:
        if self.lane is not None:
            self.route_all(self.raw.seal(), self.lane)

    def tick(self, now: int, lane: Lane) -> None:
        self._on_readable()
        self._pass_raw()
        spoofed = self._source_counters()["spoofed"]
        if self.state.state == "running" and spoofed:
            self.state = CollectorState.running(
                self.state.source, f"{spoofed} uevents not sent by the kernel (spoofed) ignored")

    def _source_counters(self) -> Counter[str]:
        total = Counter(self._closed_counters)
        if self.source is not None:
            s = self.source.stats()
            total.update({name: s[name] for name in SOURCE_COUNTERS})
        return total

    def _source_drops(self) -> dict[str, int]:
        if self.source is None:
            return {}
        s = self.source.stats()
        return {"periph_enobufs": s.enobufs, "periph_malformed": s.malformed,
                "periph_truncated": s.truncated, "periph_dropped": s.dropped}

    def drops(self) -> dict[str, int]:
        total = self._closed_drops + Counter(self._source_drops())
        sink = self.raw.stats()
        total["sink_full"] = sink.dropped_full
        total["too_large"] = sink.dropped_encode
        return dict(total)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update(self._source_counters())
        return out


# The sysfs directories whose entries a snapshot lists (each a link to the device's directory).
SNAPSHOT_DIRS = ("bus/usb/devices", "class/block", "class/net")


def snapshot(root: Path, lane: Lane) -> int:
    """One `present` event per USB device and interface, block device and network interface
    there now (`micro-agent collect Peripheral`): each device's sysfs `uevent` file (the
    KEY=VALUE lines of its `add`) decoded by the core as a uevent with ACTION=present.
    Returns the devices that could not be read (gone meanwhile)."""
    sysfs = root / "sys"
    unreadable = 0
    with PeripheralSource(PeripheralOptions(listen=False, sysfs_root=str(sysfs))) as source:
        base = sysfs.resolve()
        for directory in SNAPSHOT_DIRS:
            for entry in sorted((sysfs / directory).glob("*")):
                try:
                    datagram = _present(entry.resolve(), base)
                except (OSError, ValueError):
                    unreadable += 1
                    continue
                if lane.sink.full():
                    lane.spill(lane.sink.take())
                source.decode(lane.sink, datagram)
    return unreadable


def _present(device: Path, sysfs: Path) -> bytes:
    devpath = ("/" + str(device.relative_to(sysfs))).encode()
    subsystem = (device / "subsystem").resolve().name.encode()
    lines = [line for line in (device / "uevent").read_bytes().split(b"\n") if line]
    head = [b"ACTION=present", b"DEVPATH=" + devpath, b"SUBSYSTEM=" + subsystem]
    return b"present@" + devpath + b"\0" + b"\0".join(head + lines) + b"\0"
