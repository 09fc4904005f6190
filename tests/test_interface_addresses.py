"""agent.interface_addresses (NetworkActivity_Devices, SystemInformation's interfaces) against
iproute2's `ip -json address` on this machine's interfaces, and its link decoder on messages
built here."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess

import pytest
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


def test_link_messages_are_decoded_and_bounds_checked() -> None:
    """RTM_NEWLINK payloads built here: every field read, and a truncated message or an
    attribute that overruns its message is an error, never a read past the end."""
    import struct

    from agent.interface_addresses import IFINFOMSG, AddressDumpError, _link_of

    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + b"\0" * (-len(raw) % 4)

    kind_nested = attr(1, b"veth\0")  # IFLA_INFO_KIND inside IFLA_LINKINFO
    payload = (IFINFOMSG.pack(0, 1, 7, 0x1003, 0) + attr(3, b"vA\0")
               + attr(1, bytes.fromhex("020000000a01")) + attr(4, struct.pack("=I", 1280))
               + attr(16, b"\x06") + attr(18 | 0x8000, kind_nested))
    link = _link_of(payload)
    assert link is not None
    assert (link.index, link.name, link.arphrd, link.up, link.operstate, link.mac, link.mtu,
            link.kind) == (7, "vA", 1, True, "UP", "02:00:00:00:0a:01", 1280, "veth")
    bare = _link_of(IFINFOMSG.pack(0, 772, 1, 0, 0) + attr(3, b"lo\0") + attr(16, b"\x09"))
    assert bare is not None
    assert (bare.up, bare.operstate, bare.mac, bare.mtu, bare.kind) == (False, "9", None, None,
                                                                      None)
    assert _link_of(IFINFOMSG.pack(0, 1, 2, 0, 0)) is None  # no name
    with pytest.raises(AddressDumpError):
        _link_of(payload[: IFINFOMSG.size - 1])
    with pytest.raises(AddressDumpError):
        _link_of(IFINFOMSG.pack(0, 1, 2, 0, 0) + struct.pack("=HH", 40, 3) + b"vA\0\0")
