"""The IPv4 and IPv6 addresses of network interfaces, read with one rtnetlink dump
(RTM_GETADDR) on a plain socket.

The agent process keeps pyroute2 out (its import alone costs megabytes; the inventory
gatherers that need it run in a child, agent.inventory.__main__). An address dump is a request
and a few replies of fixed-layout structs, small enough to read here: unlike the ioctl
SIOCGIFADDR, it gives every IPv4 address of an interface, not only the first, and IPv6 too.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_GETADDR = 22
RTM_NEWADDR = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTATTR = struct.Struct("=HH")  # len, type
NLMSGERR = struct.Struct("=i")  # the error code opening an NLMSG_ERROR payload
RECV_BYTES = 65536
TIMEOUT_S = 5.0  # the kernel answers a dump at once; this only bounds a wedged netlink


class AddressDumpError(OSError):
    """The kernel refused the dump or answered something that is no address dump."""


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _address_of(payload: bytes) -> tuple[int, str] | None:
    """(interface index, address) of one RTM_NEWADDR payload; None for another family."""
    if len(payload) < IFADDRMSG.size:
        raise AddressDumpError("RTM_NEWADDR shorter than its ifaddrmsg")
    family, _prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs: dict[int, bytes] = {}
    offset = _align4(IFADDRMSG.size)
    while offset + RTATTR.size <= len(payload):
        length, kind = RTATTR.unpack_from(payload, offset)
        if length < RTATTR.size or offset + length > len(payload):
            raise AddressDumpError(f"rtattr of length {length} at {offset} overruns its message")
        attrs[kind] = payload[offset + RTATTR.size : offset + length]
        offset += _align4(length)
    # IFA_LOCAL is the local end of a point-to-point IPv4 link, where IFA_ADDRESS is the peer;
    # elsewhere only IFA_ADDRESS is given.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None:
        return None
    if len(raw) not in (4, 16):
        raise AddressDumpError(f"address attribute of {len(raw)} bytes")
    return index, ipaddress.ip_address(raw).compressed


def all_addresses() -> list[tuple[int, str]]:
    """(interface index, address) of every address in this network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "little") or 1
        request = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = NLMSGHDR.pack(NLMSGHDR.size + len(request), RTM_GETADDR,
                               NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        sock.sendto(header + request, (0, 0))
        found: list[tuple[int, str]] = []
        while True:
            data = sock.recv(RECV_BYTES)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _flags, msg_seq, _pid = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size or offset + length > len(data):
                    raise AddressDumpError(f"netlink message of length {length} overruns")
                payload = data[offset + NLMSGHDR.size : offset + length]
                offset += _align4(length)
                if msg_seq != seq:
                    continue  # not the answer to our request
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    if len(payload) < NLMSGERR.size:
                        raise AddressDumpError("NLMSG_ERROR shorter than its error code")
                    (code,) = NLMSGERR.unpack_from(payload)
                    if code == 0:
                        continue  # an acknowledgement
                    raise AddressDumpError(-code, f"RTM_GETADDR: {os.strerror(-code)}")
                if kind == RTM_NEWADDR:
                    address = _address_of(payload)
                    if address is not None:
                        found.append(address)


def interface_addresses(devices: tuple[str, ...]) -> tuple[set[str], list[str]]:
    """The IPv4 and IPv6 addresses (as the sources write them) of the named interfaces, and
    the names that are no interface here."""
    index = {name: number for number, name in socket.if_nameindex()}
    wanted = {index[name] for name in devices if name in index}
    found = {address for number, address in all_addresses() if number in wanted}
    return found, [name for name in devices if name not in index]
