"""agent.interface_addresses (NetworkActivity_Devices) against iproute2's `ip -json address`,
on this machine's interfaces."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess

from conftest import skip_unless_ci

from agent.interface_addresses import all_addresses, interface_addresses


def ip_addresses() -> dict[str, set[str]]:
    exe = shutil.which("ip")
    if exe is None:
        skip_unless_ci("ip is not installed (apt-get install iproute2)")
        raise AssertionError("unreachable")
    out = subprocess.run([exe, "-json", "address", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {link["ifname"]: {ipaddress.ip_address(a["local"]).compressed
                             for a in link.get("addr_info", [])}
            for link in json.loads(out)}


def test_every_interface_matches_ip_address() -> None:
    expected = ip_addresses()
    names = tuple(name for _, name in socket.if_nameindex())
    assert set(names) == set(expected)
    for name in names:
        assert interface_addresses((name,)) == (expected[name], []), name
    assert "127.0.0.1" in expected["lo"]


def test_unknown_names_are_reported_and_add_nothing() -> None:
    expected = ip_addresses()
    found, missing = interface_addresses(("nosuchif0", "lo", "nosuchif0", "x" * 40))
    assert found == expected["lo"]
    assert missing == ["nosuchif0", "nosuchif0", "x" * 40]
    assert interface_addresses(()) == (set(), [])


def test_all_addresses_names_known_interfaces() -> None:
    indexes = {number for number, _ in socket.if_nameindex()}
    addresses = all_addresses()
    assert addresses
    assert {number for number, _ in addresses} <= indexes
    assert sorted(address for _, address in addresses) == sorted(
        address for names in ip_addresses().values() for address in names)
