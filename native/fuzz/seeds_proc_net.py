"""Seeds of fuzz_proc_net: /proc/net/{tcp,tcp6,udp,udp6} text in the kernel's format, built
from addresses with struct (no capture of the live system), in the harness's input form: one
byte (bit 0: UDP, bit 1: IPv6), then the file's text. tests/test_proc_net.py formats its
crafted lines with the same functions.

    python3 native/fuzz/seeds_proc_net.py DIR
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)
TCP6_HEADER = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
UDP_HEADER = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode ref pointer drops\n"
)


def hex_addr(family: int, text: str, byteorder: str = "=") -> str:
    """The address as the kernel prints it: each 32-bit word of the network-order bytes read
    as a CPU integer (`byteorder` "=": this machine's, "<" x86/arm, ">" big endian)."""
    raw = socket.inet_pton(family, text)
    words = struct.unpack(f"{byteorder}{len(raw) // 4}I", raw)
    return "".join(f"{w:08X}" for w in words)


def line(
    slot: int,
    family: int,
    local: str,
    lport: int,
    remote: str,
    rport: int,
    state: int,
    uid: int,
    inode: int,
    udp: bool = False,
    byteorder: str = "=",
) -> str:
    """One socket line as get_tcp4_sock / tcp6_sock_seq_show / udp4_format_sock write it."""
    la, ra = hex_addr(family, local, byteorder), hex_addr(family, remote, byteorder)
    tail = " 2 0000000000000000 0" if udp else " 1 0000000000000000 100 0 0 10 0"
    return (
        f"{slot:4d}: {la}:{lport:04X} {ra}:{rport:04X} {state:02X} 00000000:00000000 "
        f"00:00000000 00000000 {uid:5d}        0 {inode}{tail}\n"
    )


def seeds() -> dict[str, bytes]:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    tcp4 = TCP_HEADER + "".join(
        [
            line(0, v4, "0.0.0.0", 22, "0.0.0.0", 0, 0x0A, 0, 1001),
            line(1, v4, "127.0.0.1", 631, "0.0.0.0", 0, 0x0A, 0, 1002),
            line(2, v4, "192.168.1.10", 22, "192.168.1.20", 51234, 0x01, 0, 1003),
            line(3, v4, "192.168.1.10", 40001, "93.184.216.34", 443, 0x06, 0, 0),
        ]
    )
    tcp6 = TCP6_HEADER + "".join(
        [
            line(0, v6, "::", 22, "::", 0, 0x0A, 0, 2001),
            line(1, v6, "2001:db8::1", 22, "2001:db8::2", 50000, 0x01, 1000, 2002),
            line(2, v6, "::ffff:10.0.0.1", 50001, "::ffff:10.0.0.2", 80, 0x02, 33, 2003),
        ]
    )
    udp4 = UDP_HEADER + "".join(
        [
            line(0, v4, "0.0.0.0", 68, "0.0.0.0", 0, 0x07, 0, 3001, udp=True),
            line(1, v4, "10.0.0.1", 5353, "10.0.0.53", 53, 0x01, 0, 3003, udp=True),
        ]
    )
    udp6 = UDP_HEADER + line(0, v6, "fe80::1", 546, "::", 0, 0x07, 0, 3002, udp=True)
    odd = tcp4 + "   9: 0100007F:ZZZZ 00000000:0000 0A\n" + "x" * 700 + "\n\n  7: 01"
    return {
        "tcp": b"\x00" + tcp4.encode(),
        "udp": b"\x01" + udp4.encode(),
        "tcp6": b"\x02" + tcp6.encode(),
        "udp6": b"\x03" + udp6.encode(),
        "tcp-odd": b"\x00" + odd.encode(),
    }


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
