"""Network interfaces (RTM_GETLINK) and their IPv4 and IPv6 addresses (RTM_GETADDR), each read
with one rtnetlink dump on a plain socket.

A dump is a request and a few replies of fixed-layout structs, small enough to read here:
pyroute2's import alone holds 17 to 34 MB, this module a few dozen kB, so SystemInformation
runs in the agent process. Unlike the ioctl SIOCGIFADDR, the address dump gives every IPv4
address of an interface, not only the first, and IPv6 too. `route_socket(netns)` opens the
socket in a named network namespace (/run/netns/NAME) without moving the process there.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

from agent.record import record

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3  # the counters are a third of a link message; none is read
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
CLONE_NEWNET = 0x40000000
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
RTATTR = struct.Struct("=HH")  # len, type
U32 = struct.Struct("=I")
NLMSGERR = struct.Struct("=i")  # the error code opening an NLMSG_ERROR payload
# The kernel fills one read with up to 32 kB of dump messages (netlink_dump); more room is
# never used.
RECV_BYTES = 32768
TIMEOUT_S = 5.0  # the kernel answers a dump at once; this only bounds a wedged netlink

# IF_OPER_* (RFC 2863 operational state) as `ip link` and pyroute2 name them.
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


class AddressDumpError(OSError):
    """The kernel refused the dump or answered something that is no such dump."""


@record(frozen=True)
class Link:
    """One network interface as RTM_NEWLINK describes it."""

    index: int
    name: str
    arphrd: int  # ARPHRD_* link type
    flags: int  # IFF_*
    operstate: str  # an OPERSTATES name, or the number the kernel gave
    mac: str | None  # IFLA_ADDRESS as colon-separated hex; None when absent or empty
    mtu: int | None
    kind: str | None  # IFLA_INFO_KIND (veth, bridge, vlan ...); None for a physical device

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@record(frozen=True)
class Address:
    """One address as RTM_NEWADDR describes it."""

    family: int  # AF_INET or AF_INET6
    index: int
    prefixlen: int
    address: str  # as inet_ntop writes it, the form the sources use


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    """The rtattrs of one message from `offset` on, by type (the last of a repeated type)."""
    attrs: dict[int, bytes] = {}
    offset = _align4(offset)
    while offset + RTATTR.size <= len(payload):
        length, kind = RTATTR.unpack_from(payload, offset)
        if length < RTATTR.size or offset + length > len(payload):
            raise AddressDumpError(f"rtattr of length {length} at {offset} overruns its message")
        attrs[kind & NLA_TYPE_MASK] = payload[offset + RTATTR.size : offset + length]
        offset += _align4(length)
    return attrs


def _string(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _address_of(payload: bytes) -> Address | None:
    """One RTM_NEWADDR payload; None for another family or without an address."""
    if len(payload) < IFADDRMSG.size:
        raise AddressDumpError("RTM_NEWADDR shorter than its ifaddrmsg")
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs = _attributes(payload, IFADDRMSG.size)
    # IFA_LOCAL is the local end of a point-to-point IPv4 link, where IFA_ADDRESS is the peer;
    # elsewhere only IFA_ADDRESS is given.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None:
        return None
    if len(raw) != (4 if family == socket.AF_INET else 16):
        raise AddressDumpError(f"address attribute of {len(raw)} bytes")
    return Address(family, index, prefixlen, socket.inet_ntop(family, raw))


def _link_of(payload: bytes) -> Link | None:
    """One RTM_NEWLINK payload; None for a link without a name (none should exist)."""
    if len(payload) < IFINFOMSG.size:
        raise AddressDumpError("RTM_NEWLINK shorter than its ifinfomsg")
    _family, arphrd, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = _attributes(payload, IFINFOMSG.size)
    name = _string(attrs.get(IFLA_IFNAME, b""))
    if not name:
        return None
    raw_state = attrs.get(IFLA_OPERSTATE)
    state = raw_state[0] if raw_state else 0
    operstate = OPERSTATES[state] if state < len(OPERSTATES) else str(state)
    mac = attrs.get(IFLA_ADDRESS)
    mtu = attrs.get(IFLA_MTU)
    kind = None
    info = attrs.get(IFLA_LINKINFO)
    if info:
        kind = _string(_attributes(info, 0).get(IFLA_INFO_KIND, b"")) or None
    return Link(index, name, arphrd, flags, operstate,
                ":".join(f"{b:02x}" for b in mac) if mac else None,
                U32.unpack(mtu)[0] if mtu is not None and len(mtu) == 4 else None, kind)


def route_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_ROUTE socket of this network namespace, or of the named one (/run/netns/NAME).

    A socket belongs to the namespace it was opened in; a thread that entered the named one
    opens it there, and the process (its other threads) stays where it is."""
    if netns is None:
        return _open_route_socket()
    opened: list[socket.socket] = []
    failed: list[OSError] = []

    def open_inside() -> None:
        try:
            fd = os.open(os.path.join("/run/netns", netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            opened.append(_open_route_socket())
        except OSError as err:
            failed.append(err)

    # The thread ends inside the namespace: a thread that entered one is never reused.
    thread = threading.Thread(target=open_inside, name="netns-open", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return opened[0]


def _setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread: os.setns from Python 3.12, libc's before."""
    setns = getattr(os, "setns", None)
    if setns is not None:
        setns(fd, nstype)
        return
    # Only a named namespace, never the agent's default, needs this: ctypes is loaded then.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _open_route_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.settimeout(TIMEOUT_S)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _dump(sock: socket.socket, request_type: int, reply_type: int,
          body: bytes) -> Iterator[bytes]:
    """The payloads of the `reply_type` messages answering one dump request."""
    seq = int.from_bytes(os.urandom(4), "little") or 1
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), request_type,
                           NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    sock.sendto(header + body, (0, 0))
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
                return
            if kind == NLMSG_ERROR:
                if len(payload) < NLMSGERR.size:
                    raise AddressDumpError("NLMSG_ERROR shorter than its error code")
                (code,) = NLMSGERR.unpack_from(payload)
                if code == 0:
                    continue  # an acknowledgement
                raise AddressDumpError(-code, f"rtnetlink dump {request_type}: "
                                              f"{os.strerror(-code)}")
            if kind == reply_type:
                yield payload


def links(sock: socket.socket) -> list[Link]:
    """Every network interface of the socket's namespace, in the kernel's order."""
    ext_mask = RTATTR.pack(RTATTR.size + U32.size, IFLA_EXT_MASK) + U32.pack(
        RTEXT_FILTER_SKIP_STATS)
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + ext_mask
    found = (_link_of(payload) for payload in _dump(sock, RTM_GETLINK, RTM_NEWLINK, body))
    return [link for link in found if link is not None]


def addresses(sock: socket.socket) -> list[Address]:
    """Every IPv4 and IPv6 address of the socket's namespace, in the kernel's order."""
    body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    found = (_address_of(payload) for payload in _dump(sock, RTM_GETADDR, RTM_NEWADDR, body))
    return [address for address in found if address is not None]


def all_addresses() -> list[tuple[int, str]]:
    """(interface index, address) of every address in this network namespace."""
    with route_socket() as sock:
        return [(a.index, a.address) for a in addresses(sock)]


def interface_addresses(devices: tuple[str, ...]) -> tuple[set[str], list[str]]:
    """The IPv4 and IPv6 addresses (as the sources write them) of the named interfaces, and
    the names that are no interface here."""
    index = {name: number for number, name in socket.if_nameindex()}
    wanted = {index[name] for name in devices if name in index}
    found = {address for number, address in all_addresses() if number in wanted}
    return found, [name for name in devices if name not in index]
