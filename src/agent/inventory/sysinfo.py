"""SystemInformation: what the device is (OS, kernel, memory, CPU, hardware) and its network
interfaces, one snapshot.

Files are read under `root` (os-release, /proc, /sys/class/dmi/id, /proc/device-tree); the
interfaces come from two rtnetlink dumps (agent.interface_addresses: links, then addresses),
in the current network namespace or the named one. Twin overrides (`SystemInformation_HardwareVendor` ...) replace what the
device says about its hardware.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from agent.interface_addresses import addresses, links, route_socket
from agent.inventory import Event, Snapshot, now_ms, read_text

SRC = "sysinfo"

# Twin override name (the part after "SystemInformation_") -> event key.
OVERRIDE_KEYS = {
    "HardwareVendor": "hwvendor",
    "HardwareModel": "hwmodel",
    "HardwareSerialNumber": "hwserial",
    "FirmwareVendor": "fwvendor",
    "FirmwareVersion": "fwver",
}

# /sys/class/dmi/id file -> event key (x86 and ARM servers with SMBIOS).
_DMI_FILES = {
    "sys_vendor": "hwvendor",
    "product_name": "hwmodel",
    "product_serial": "hwserial",
    "bios_vendor": "fwvendor",
    "bios_version": "fwver",
}

# Values firmware vendors leave in unset DMI fields: no information, so the key stays absent.
_DMI_PLACEHOLDERS = {
    "",
    "to be filled by o.e.m.",
    "default string",
    "not specified",
    "system serial number",
    "system product name",
    "system manufacturer",
    "none",
    "0",
}

# ARPHRD_* numbers as `ip -j link` names them (iproute2 lib/ll_types.c); others stay numbers.
_LINK_TYPES = {
    1: "ether",
    24: "ieee1394",
    32: "infiniband",
    256: "slip",
    280: "can",
    512: "ppp",
    768: "ipip",
    769: "tunnel6",
    772: "loopback",
    776: "sit",
    778: "gre",
    783: "irda",
    801: "ieee802.11",
    803: "ieee802.11/radiotap",
    804: "ieee802.15.4",
    823: "gre6",
    65534: "none",
    65535: "void",
}


def _os_release(root: Path, snap: Snapshot, event: Event) -> None:
    # /etc/os-release, else /usr/lib/os-release (the standard's fallback).
    text = read_text(root, "/etc/os-release", snap)
    if text is None:
        text = read_text(root, "/usr/lib/os-release", snap)
    if text is None:
        snap.skip("os-release", "neither /etc/os-release nor /usr/lib/os-release exists")
        return
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\$", "$").replace("\\\\", "\\")
        fields[key.strip()] = value
    for src_key, key in (("NAME", "os"), ("VERSION_ID", "osver"), ("ID", "osid")):
        if fields.get(src_key):
            event[key] = fields[src_key]
    if fields.get("VERSION"):
        event["osverfull"] = fields["VERSION"]


def _first_line(root: Path, path: str, snap: Snapshot) -> str | None:
    text = read_text(root, path, snap)
    if text is None:
        return None
    value = text.strip("\x00").strip()
    return value or None


def _kernel(root: Path, snap: Snapshot, event: Event) -> None:
    release = _first_line(root, "/proc/sys/kernel/osrelease", snap)
    if release:
        event["kernel"] = release
    host = _first_line(root, "/proc/sys/kernel/hostname", snap)
    if host:
        event["host"] = host
    # The architecture is the running kernel's; no file under /proc holds it.
    event["arch"] = os.uname().machine


def _boot_time(root: Path, snap: Snapshot, event: Event) -> None:
    text = read_text(root, "/proc/stat", snap)
    if text is None:
        return
    for line in text.splitlines():
        if line.startswith("btime "):
            try:
                event["boot"] = int(line.split()[1]) * 1000
            except (IndexError, ValueError):
                snap.error("/proc/stat", f"malformed btime line {line!r}")
            return
    snap.error("/proc/stat", "no btime line")


def _memory(root: Path, snap: Snapshot, event: Event) -> None:
    text = read_text(root, "/proc/meminfo", snap)
    if text is None:
        return
    wanted = {"MemTotal": "memtotal", "MemFree": "memfree", "MemAvailable": "memavail"}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        key = wanted.get(name)
        if key is None:
            continue
        parts = rest.split()
        try:
            kib = int(parts[0])
        except (IndexError, ValueError):
            snap.error("/proc/meminfo", f"malformed line {line!r}")
            continue
        event[key] = kib * 1024


def _cpu(root: Path, snap: Snapshot, event: Event) -> None:
    text = read_text(root, "/proc/cpuinfo", snap)
    if text is None:
        return
    count = 0
    model: str | None = None
    # ARM kernels name the SoC in "Hardware" / "Model" and the core in "model name" or
    # "Processor"; x86 has "model name" per processor.
    fallback: str | None = None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip()
        value = value.strip()
        if name == "processor":
            count += 1
        elif name == "model name" and model is None and value:
            model = value
        elif name in ("Processor", "Hardware", "cpu model", "cpu") and fallback is None and value:
            fallback = value
    if model or fallback:
        event["cpu"] = model or fallback
    event["ncpu"] = count if count else (os.cpu_count() or 0)


def _hardware(root: Path, snap: Snapshot, event: Event) -> None:
    found = False
    for name, key in _DMI_FILES.items():
        value = _first_line(root, f"/sys/class/dmi/id/{name}", snap)
        if value is not None:
            found = True
            if value.lower() not in _DMI_PLACEHOLDERS:
                event[key] = value
    if found:
        return
    # ARM boards describe themselves in the device tree: model is a NUL-terminated string,
    # compatible a list of "vendor,board" strings, serial-number present on some boards.
    model = _first_line(root, "/proc/device-tree/model", snap)
    if model is None:
        snap.skip("hardware", "neither /sys/class/dmi/id nor /proc/device-tree/model exists")
        return
    event["hwmodel"] = model
    serial = _first_line(root, "/proc/device-tree/serial-number", snap)
    if serial:
        event["hwserial"] = serial
    compatible = read_text(root, "/proc/device-tree/compatible", snap)
    if compatible:
        first = compatible.split("\x00", 1)[0]
        vendor, sep, _ = first.partition(",")
        if sep and vendor:
            event["hwvendor"] = vendor


def interfaces(netns: str | None = None, ts: int | None = None) -> Snapshot:
    """One `netif` event per network interface: name, index, MAC, state, type and addresses.

    netns: a named network namespace (/run/netns/NAME) instead of the current one."""
    snap = Snapshot()
    stamp = now_ms() if ts is None else ts
    try:
        with route_socket(netns) as sock:
            found_links = links(sock)
            found_addresses = addresses(sock)
    except OSError as exc:
        snap.error("rtnetlink", exc.strerror or exc)
        return snap
    by_index: dict[int, Event] = {}
    for link in found_links:
        event: Event = {
            "t": "netif",
            "ts": stamp,
            "src": SRC,
            "name": link.name,
            "idx": link.index,
            "type": _LINK_TYPES.get(link.arphrd, str(link.arphrd)),
            "state": link.operstate.lower(),
            "up": link.up,
            "ipv4": [],
            "ipv6": [],
        }
        if link.mac:
            event["mac"] = link.mac
        if link.mtu is not None:
            event["mtu"] = link.mtu
        if link.kind:
            event["kind"] = link.kind
        by_index[link.index] = event
    for address in found_addresses:
        owner = by_index.get(address.index)
        if owner is None:
            # An address of a link that went away between the two dumps.
            continue
        bucket = owner["ipv4" if address.family == socket.AF_INET else "ipv6"]
        assert isinstance(bucket, list)
        bucket.append(f"{address.address}/{address.prefixlen}")
    snap.events.extend(by_index[i] for i in sorted(by_index))
    return snap


def gather(
    root: Path = Path("/"),
    overrides: Mapping[str, str] | None = None,
    netns: str | None = None,
    with_interfaces: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Snapshot:
    """The `sysinfo` event and a `netif` event per interface.

    overrides: twin values keyed by the names after "SystemInformation_" (HardwareVendor,
    HardwareModel, HardwareSerialNumber, FirmwareVendor, FirmwareVersion); a non-empty value
    replaces what the device reports. Unknown names are recorded as errors. environ (default
    os.environ): `agent_type` is "Edge" when it holds the IoT Edge module environment, as
    Defender for IoT's agent reports it, else "Standalone"."""
    from agent.uplink.identity import edge_environment_present

    snap = Snapshot()
    ts = now_ms()
    event: Event = {"t": "sysinfo", "ts": ts, "src": SRC,
                    "agent_type": "Edge" if edge_environment_present(environ) else "Standalone"}
    _os_release(root, snap, event)
    _kernel(root, snap, event)
    _boot_time(root, snap, event)
    _memory(root, snap, event)
    _cpu(root, snap, event)
    _hardware(root, snap, event)
    for name, value in (overrides or {}).items():
        short = name.removeprefix("SystemInformation_")
        key = OVERRIDE_KEYS.get(short)
        if key is None:
            snap.error("overrides", f"unknown property {name!r}")
        elif value:
            event[key] = value
    snap.events.append(event)
    if with_interfaces:
        nics = interfaces(netns, ts)
        snap.events.extend(nics.events)
        snap.errors.extend(nics.errors)
    return snap
