"""SystemInformation: interfaces and addresses equal `ip -j addr`; a veth pair created by the
test appears; files under a prepared root and twin overrides give the system fields."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless_ci

from agent.inventory import sysinfo


def _ip_addr(ns: str | None) -> list[dict[str, Any]]:
    args = ["ip"] + (["-n", ns] if ns else []) + ["-j", "addr"]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def _view_ip(links: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    view = {}
    for link in links:
        addrs = link.get("addr_info", [])
        view[link["ifname"]] = (
            link["ifindex"], link.get("address"), link["operstate"].lower(),
            link.get("link_type"),
            sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs if a["family"] == "inet"),
            sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs if a["family"] == "inet6"))
    return view


def _view_ours(events: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {e["name"]: (e["idx"], e.get("mac"), e["state"], e["type"], sorted(e["ipv4"]),
                        sorted(e["ipv6"])) for e in events if e["t"] == "netif"}


@pytest.fixture()
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        skip_unless_ci("iproute2 (ip) is not installed")
    name = f"inv-si-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        skip_unless_ci(f"cannot create a network namespace: {done.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.live
@pytest.mark.root
def test_veth_pair_appears_and_equals_ip_addr(netns: str) -> None:
    ip = ["ip", "-n", netns]
    for cmd in (["link", "add", "invA", "type", "veth", "peer", "name", "invB"],
                ["link", "set", "invA", "address", "02:00:00:00:aa:01"],
                ["addr", "add", "198.51.100.7/24", "dev", "invA"],
                ["addr", "add", "2001:db8:7::7/64", "dev", "invA", "nodad"],
                ["link", "set", "invA", "up"], ["link", "set", "invB", "up"],
                ["link", "set", "lo", "up"]):
        subprocess.run(ip + cmd, check=True)
    snap = sysinfo.interfaces(netns)
    assert snap.errors == []
    ours = _view_ours(snap.events)
    assert ours == _view_ip(_ip_addr(netns))
    a = next(e for e in snap.events if e["name"] == "invA")
    assert a["kind"] == "veth" and a["mac"] == "02:00:00:00:aa:01"
    assert a["ipv4"] == ["198.51.100.7/24"]
    assert "2001:db8:7::7/64" in a["ipv6"]
    assert {"invA", "invB", "lo"} <= set(ours)


@pytest.mark.live
@pytest.mark.root
def test_a_named_namespace_leaves_the_process_where_it_is(netns: str) -> None:
    """The dump reads the named namespace from a thread that entered it; the calling thread
    (and so the agent's loop) stays in its own, and MTU and link kind come from there too."""
    subprocess.run(["ip", "-n", netns, "link", "add", "invbr", "mtu", "1280", "type",
                    "bridge"], check=True)
    own = os.readlink("/proc/thread-self/ns/net")
    snap = sysinfo.interfaces(netns)
    assert os.readlink("/proc/thread-self/ns/net") == own
    assert snap.errors == []
    by_name = {e["name"]: e for e in snap.events}
    assert set(by_name) == {"lo", "invbr"}
    assert (by_name["invbr"]["mtu"], by_name["invbr"]["kind"]) == (1280, "bridge")
    assert (by_name["lo"]["type"], by_name["lo"]["up"], "kind" in by_name["lo"]) == (
        "loopback", False, False)
    # The host's interfaces are another namespace's: the same call without one sees them.
    host = {e["name"] for e in sysinfo.interfaces().events}
    assert "invbr" not in host and host == {link["ifname"] for link in _ip_addr(None)}


def test_a_namespace_that_does_not_exist_is_an_error() -> None:
    snap = sysinfo.interfaces(f"no-such-ns-{os.getpid()}")
    assert snap.events == []
    assert snap.errors == ["rtnetlink: No such file or directory"]


def test_host_interfaces_equal_ip_addr() -> None:
    # Other programs may add or remove interfaces meanwhile: retry a mismatch a few times.
    for _ in range(5):
        before = _view_ip(_ip_addr(None))
        ours = _view_ours(sysinfo.gather().events)
        after = _view_ip(_ip_addr(None))
        if before == after:
            assert ours == before
            return
    pytest.fail("the host's interfaces kept changing")


def _links_ip(ns: str | None) -> dict[str, tuple[Any, ...]]:
    args = ["ip"] + (["-n", ns] if ns else []) + ["-d", "-j", "link"]
    links = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    return {link["ifname"]: (link["mtu"], "UP" in link["flags"],
                             link.get("linkinfo", {}).get("info_kind")) for link in links}


def test_mtu_up_and_kind_equal_ip_link() -> None:
    # What `ip -j addr` does not show: MTU, the administrative UP flag, the link kind.
    for _ in range(5):
        before = _links_ip(None)
        ours = {e["name"]: (e.get("mtu"), e["up"], e.get("kind"))
                for e in sysinfo.interfaces().events}
        if before == _links_ip(None):
            assert ours == before
            return
    pytest.fail("the host's interfaces kept changing")


def test_live_system_fields() -> None:
    snap = sysinfo.gather(with_interfaces=False)
    (event,) = snap.events
    assert event["kernel"] == os.uname().release
    assert event["arch"] == os.uname().machine
    assert event["host"] == os.uname().nodename
    assert event["ncpu"] == os.cpu_count()
    assert isinstance(event["memtotal"], int) and event["memtotal"] > event["memfree"] > 0
    assert 0 < int(event["boot"]) <= int(event["ts"])  # type: ignore[call-overload]
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().split()
                   if line.startswith("ID="))
    assert event["osid"] == release["ID"].strip('"')


def _tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


PROC = {
    "etc/os-release": 'NAME="Raspbian GNU/Linux"\nVERSION_ID="11"\nVERSION="11 (bullseye)"\n'
                      "ID=raspbian\n",
    "proc/sys/kernel/osrelease": "6.1.21-v8+\n",
    "proc/sys/kernel/hostname": "pi\n",
    "proc/stat": "cpu  1 2 3\nbtime 1700000000\n",
    "proc/meminfo": "MemTotal:        3882924 kB\nMemFree:         2000000 kB\n"
                    "MemAvailable:    3000000 kB\n",
    "proc/cpuinfo": "processor\t: 0\nBogoMIPS\t: 108.00\n\nprocessor\t: 1\n\n"
                    "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n",
}


def test_device_tree_board_and_overrides(tmp_path: Path) -> None:
    _tree(tmp_path, {**PROC,
                     "proc/device-tree/model": b"Raspberry Pi 4 Model B Rev 1.4\x00",
                     "proc/device-tree/serial-number": b"10000000abcdef01\x00",
                     "proc/device-tree/compatible": b"raspberrypi,4-model-b\x00brcm,bcm2711\x00"})
    snap = sysinfo.gather(tmp_path, with_interfaces=False)
    assert snap.errors == []
    (event,) = snap.events
    expected = {"os": "Raspbian GNU/Linux", "osver": "11", "osid": "raspbian",
                "osverfull": "11 (bullseye)", "kernel": "6.1.21-v8+", "host": "pi",
                "boot": 1700000000000, "memtotal": 3882924 * 1024, "memfree": 2000000 * 1024,
                "memavail": 3000000 * 1024, "cpu": "BCM2835", "ncpu": 2,
                "hwmodel": "Raspberry Pi 4 Model B Rev 1.4", "hwserial": "10000000abcdef01",
                "hwvendor": "raspberrypi"}
    assert {k: event[k] for k in expected} == expected
    snap = sysinfo.gather(tmp_path, {"SystemInformation_HardwareVendor": "Acme",
                                     "FirmwareVersion": "2.1", "HardwareModel": "",
                                     "Bogus": "x"}, with_interfaces=False)
    (event,) = snap.events
    assert event["hwvendor"] == "Acme" and event["fwver"] == "2.1"
    assert event["hwmodel"] == "Raspberry Pi 4 Model B Rev 1.4"  # empty override: no change
    assert snap.errors == ["overrides: unknown property 'Bogus'"]


def test_dmi_and_unreadable_files(tmp_path: Path) -> None:
    _tree(tmp_path, {**PROC, "sys/class/dmi/id/sys_vendor": "Advantech\n",
                     "sys/class/dmi/id/product_name": "UNO-2271G\n",
                     "sys/class/dmi/id/product_serial": "To be filled by O.E.M.\n",
                     "sys/class/dmi/id/bios_vendor": "American Megatrends Inc.\n",
                     "sys/class/dmi/id/bios_version": "1.05\n"})
    (tmp_path / "proc/stat").unlink()
    (tmp_path / "proc/stat").mkdir()
    snap = sysinfo.gather(tmp_path, with_interfaces=False)
    (event,) = snap.events
    assert (event["hwvendor"], event["hwmodel"], event["fwvendor"], event["fwver"]) == (
        "Advantech", "UNO-2271G", "American Megatrends Inc.", "1.05")
    assert "hwserial" not in event and "boot" not in event
    assert snap.errors == ["/proc/stat: Is a directory"]
