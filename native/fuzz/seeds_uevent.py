"""native/fuzz/seeds_uevent.py DIR: seeds for fuzz_uevent: the recorded USB and block uevents
of tests/fixtures/uevent/usb.json, a network interface's add and remove, rtnetlink link
messages (a dump, carrier changes, a removal) built with struct.pack in the kernel's layout,
and a few broken ones. The first byte of each seed is the harness's option byte (bit 0 link
socket, bit 1 spoofed sender, bit 2 sysfs, bit 3 one link remembered); a seed of several
datagrams separates them with three newlines."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "uevent" / "usb.json"
RTM_NEWLINK, RTM_DELLINK, NLMSG_DONE, NLM_F_MULTI = 16, 17, 3, 2
IFLA_IFNAME, IFLA_CARRIER = 3, 33
DUMP_SEQ = 0x7E5E0001
SEP = b"\n\n\n"
REGRESSIONS = Path(__file__).resolve().parent / "regressions" / "uevent"


def uevent(action: str, devpath: str, *fields: str) -> bytes:
    env = [f"ACTION={action}", f"DEVPATH={devpath}", *fields, "SEQNUM=7"]
    return f"{action}@{devpath}\0".encode() + b"\0".join(f.encode() for f in env) + b"\0"


def link(ifindex: int, carrier: int, kind: int = RTM_NEWLINK, seq: int = 0, port: int = 0,
         flags: int = 0, name: bytes = b"eth0") -> bytes:
    attrs = struct.pack("=HH", 5 + len(name), IFLA_IFNAME) + name + b"\0"
    attrs = attrs.ljust((len(attrs) + 3) & ~3, b"\0") + struct.pack("=HHB3x", 5, IFLA_CARRIER,
                                                                    carrier)
    body = struct.pack("=BxHiII", 0, 1, ifindex, 0x1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, port) + body


def seeds() -> dict[str, tuple[int, bytes]]:
    cases = json.loads(FIXTURE.read_text())["cases"]
    out = {c["name"]: (0, c["payload"].encode()) for c in cases}
    out["all-usb"] = (0, SEP.join(c["payload"].encode() for c in cases))
    net = "/devices/virtual/net/veth0"
    out["net-add-remove"] = (0, SEP.join([
        uevent("add", net, "SUBSYSTEM=net", "INTERFACE=veth0", "IFINDEX=12"),
        uevent("move", net, "SUBSYSTEM=net", "INTERFACE=veth1", "IFINDEX=12", "DEVPATH_OLD=x"),
        uevent("remove", net, "SUBSYSTEM=net", "INTERFACE=veth1", "IFINDEX=12")]))
    out["synthetic"] = (0, uevent("add", net, "SUBSYSTEM=net", "INTERFACE=veth0",
                                  "SYNTH_UUID=0"))
    out["spoof"] = (2, uevent("add", "/devices/usb1/1-1", "SUBSYSTEM=usb",
                              "DEVTYPE=usb_device", "PRODUCT=1/2/3"))
    out["climb"] = (4, uevent("add", "/devices/../../etc", "SUBSYSTEM=usb",
                              "DEVTYPE=usb_device"))
    out["sysfs-real"] = (4, uevent("add", "/devices/virtual/block/loop0", "SUBSYSTEM=block",
                                   "DEVTYPE=disk", "DEVNAME=loop0", "MAJOR=7", "MINOR=0"))
    dump = b"".join(link(i, i % 2, seq=DUMP_SEQ, port=77, flags=NLM_F_MULTI)
                    for i in range(1, 5))
    done = struct.pack("=IHHIIi", 20, NLMSG_DONE, NLM_F_MULTI, DUMP_SEQ, 77, 0)
    out["links"] = (1, SEP.join([dump + done, link(1, 0), link(2, 0), link(2, 1),
                                 link(3, 1, RTM_DELLINK), link(9, 1)]))
    out["links-one"] = (9, SEP.join([link(1, 0), link(2, 1), link(1, 1)]))
    good = link(5, 1)
    out["link-cut"] = (1, good[:20])
    out["link-long-attr"] = (1, good[:32] + struct.pack("=H", 0xFFFF) + good[34:])
    return out


def main(directory: str) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, (options, data) in seeds().items():
        (out / name).write_bytes(bytes([options]) + data)
    # The inputs that once broke the harness, kept whole (the option byte included).
    for path in sorted(REGRESSIONS.iterdir()):
        (out / f"regression-{path.name}").write_bytes(path.read_bytes())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} DIR")
    main(sys.argv[1])
