"""The Peripheral source (native/uevent.c, docs/sources/uevent.md) and collector.

This kernel has no USB: the USB core's and the block layer's uevents of a stick, a keyboard
and a hub, as the kernel formats them, are committed in tests/fixtures/uevent/usb.json with
the event each must give, and decoded through the decoder's own entry point over a sysfs tree
made from the same file. Everything else runs for real: uevents and carrier changes of a veth
pair whose peer lives in a network namespace, a uevent written to sysfs, and a uevent sent by
a user-space socket (a spoof, counted, never a device).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from leakcheck import assert_rss_flat

from agent.collectors.peripheral import PeripheralCollector
from agent.native.aggregate import Aggregator
from agent.native.peripheral import PeripheralOptions, PeripheralSource
from agent.native.sink import EventSink, SinkOptions

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "uevent" / "usb.json"
NETLINK_KOBJECT_UEVENT = 15
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
IFLA_IFNAME, IFLA_CARRIER = 3, 33
NLM_F_MULTI = 2
DUMP_SEQ = 0x7E5E0001  # native/uevent.c's dump sequence number


def fixture() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    return doc


@pytest.fixture()
def sysfs(tmp_path: Path) -> Path:
    """The fixture's sysfs files under a temporary directory."""
    root = tmp_path / "sys"
    for rel, text in fixture()["sysfs"].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def decoder(sysfs_root: Path | str = "") -> PeripheralSource:
    return PeripheralSource(PeripheralOptions(listen=False, sysfs_root=str(sysfs_root)))


def events_of(sink: EventSink) -> list[dict[str, Any]]:
    return [e for batch in sink.seal() for e in msgpack.unpackb(batch, raw=False)]


def without_ts(event: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(event.pop("ts"), int)
    return event


# ---------------------------------------------------------------------------------------------
# USB, block: recorded payloads in the kernel's format


@pytest.mark.parametrize("case", fixture()["cases"], ids=lambda c: c["name"])
def test_usb_and_block_uevents_decode_to_their_events(case: dict[str, Any], sysfs: Path) -> None:
    source, sink = decoder(sysfs), EventSink()
    appended = source.decode(sink, case["payload"].encode())
    events = events_of(sink)
    if case["expected"] is None:
        assert appended == 0 and events == []
        assert source.stats().ignored == 1
    else:
        assert appended == 1 and [without_ts(e) for e in events] == [case["expected"]]
    s = source.stats()
    assert s.uevents == 1 and s.malformed == 0 and s.bad_fields == 0 and s.spoofed == 0


def test_without_sysfs_the_strings_are_left_out() -> None:
    case = next(c for c in fixture()["cases"] if c["name"] == "stick-device-add")
    source, sink = decoder(""), EventSink()
    source.decode(sink, case["payload"].encode())
    (event,) = events_of(sink)
    assert "product" not in event and "manufacturer" not in event
    assert event["vendor_id"] == "0781" and event["bus"] == 1


def test_a_stick_plugged_in_and_out_twice_aggregates_to_one_entry_per_step(sysfs: Path) -> None:
    """The aggregator's peripheral kind: the same device on the same port (a new device
    number each time) merges, so that a plug storm is a hit count."""
    cases = {c["name"]: c["payload"].encode() for c in fixture()["cases"]}
    source, raw = decoder(sysfs), EventSink()
    for devnum in (b"004", b"007"):
        for name in ("stick-device-add", "stick-device-remove"):
            source.decode(raw, cases[name].replace(b"DEVNUM=004", b"DEVNUM=" + devnum))
    agg, out = Aggregator("peripheral"), EventSink()
    for batch in raw.seal():
        agg.add(batch, out)
    agg.flush(out)
    entries = events_of(out)
    assert [(e["op"], e["hits"], e["dev"]) for e in entries] == [("add", 2, 4), ("remove", 2, 4)]


# ---------------------------------------------------------------------------------------------
# the snapshot (`micro-agent collect Peripheral`)


def test_snapshot_lists_a_prepared_sysfs_tree(tmp_path: Path, sysfs: Path) -> None:
    """A root whose sys/ holds the stick (device, interface, disk) as sysfs lays it out:
    entries of bus/usb/devices and class/block link to the devices' directories, each with
    its `uevent` file and `subsystem` link."""
    from agent.collectors.peripheral import snapshot

    root = tmp_path
    expected = {c["name"]: c["expected"] for c in fixture()["cases"]}
    layout = {
        "stick-device-add": ("bus/usb/devices/1-2", "bus/usb",
                             ("PRODUCT=781/5567/100\nTYPE=0/0/0\nBUSNUM=001\nDEVNUM=004\n"
                             "DEVTYPE=usb_device\nDEVNAME=bus/usb/001/004\n")),
        "stick-interface-add": ("bus/usb/devices/1-2:1.0", "bus/usb",
                                ("DEVTYPE=usb_interface\nPRODUCT=781/5567/100\nTYPE=0/0/0\n"
                                "INTERFACE=8/6/80\n")),
        "stick-disk-add": ("class/block/sdb", "class/block",
                           "MAJOR=8\nMINOR=16\nDEVNAME=sdb\nDEVTYPE=disk\n"),
    }
    for name, (link, subsystem, uevent_text) in layout.items():
        device = sysfs / expected[name]["devpath"].lstrip("/")
        device.mkdir(parents=True, exist_ok=True)
        (device / "uevent").write_text(uevent_text)
        (sysfs / subsystem).mkdir(parents=True, exist_ok=True)
        (device / "subsystem").symlink_to(sysfs / subsystem)
        (sysfs / link).parent.mkdir(parents=True, exist_ok=True)
        (sysfs / link).symlink_to(device)

    class Lane:
        def __init__(self) -> None:
            self.sink = EventSink()
            self.batches: list[bytes] = []

        def spill(self, batches: list[bytes]) -> None:
            self.batches.extend(batches)

    lane = Lane()
    assert snapshot(root, lane) == 0
    got = {e["devpath"]: without_ts(e) for b in lane.batches + lane.sink.seal()
           for e in msgpack.unpackb(b, raw=False)}
    for name in layout:
        want = dict(expected[name], op="present")
        assert got[want["devpath"]] == want, name


def test_collect_peripheral_lists_this_machines_block_devices() -> None:
    """`micro-agent collect Peripheral` here: one event per entry of /sys/class/block."""
    run = subprocess.run([sys.executable, "-m", "agent.cli", "collect", "Peripheral"],
                         capture_output=True, text=True, timeout=60, check=True)
    events = [json.loads(line) for line in run.stdout.splitlines()]
    block = sorted(e["name"] for e in events if e["kind"] == "block")
    assert block == sorted(p.name for p in Path("/sys/class/block").iterdir())
    assert all(e["op"] == "present" and e["t"] == "periph" for e in events)
    assert {e["name"] for e in events if e["kind"] == "net"} == {
        p.name for p in Path("/sys/class/net").iterdir()}


# ---------------------------------------------------------------------------------------------
# hostile and malformed uevents


def uevent(action: str, devpath: str, *fields: str) -> bytes:
    env = [f"ACTION={action}", f"DEVPATH={devpath}", *fields, "SEQNUM=1"]
    return f"{action}@{devpath}\0".encode() + b"\0".join(f.encode() for f in env) + b"\0"


def test_a_uevent_from_a_user_space_sender_is_a_spoof_never_a_device() -> None:
    source, sink = decoder(), EventSink()
    payload = uevent("add", "/devices/usb1/1-1", "SUBSYSTEM=usb", "DEVTYPE=usb_device",
                     "PRODUCT=1/2/3")
    assert source.decode(sink, payload, sender=4242) == 0
    assert source.decode(sink, payload, socket="link", sender=4242) == 0
    s = source.stats()
    assert s.spoofed == 2 and s.events == 0 and s.uevents == 0 and events_of(sink) == []


@pytest.mark.parametrize("payload, counter", [
    (b"", "malformed"),
    (b"no at sign\0ACTION=add\0", "malformed"),
    (b"add@/devices/x", "malformed"),  # no NUL after the header
    (uevent("add", "/devices/a").replace(b"DEVPATH=/devices/a", b"DEVPATH=/devices/b"),
     "malformed"),  # the header and DEVPATH differ
    (uevent("remove", "/devices/a", "SUBSYSTEM=net").replace(b"remove@", b"add@", 1),
     "malformed"),
    (uevent("add", "/devices/a"), "malformed"),  # no SUBSYSTEM
    (uevent("add", "/devices/a", "SUBSYSTEM=usb", "DEVTYPE=usb_device", "PRODUCT=10000/1/1"),
     "bad_fields"),
    (uevent("add", "/devices/a", "SUBSYSTEM=usb", "DEVTYPE=usb_device", "TYPE=1/2"),
     "bad_fields"),
    (uevent("add", "/devices/a", "SUBSYSTEM=usb", "DEVTYPE=usb_device", "BUSNUM=99999999999"),
     "bad_fields"),
    (uevent("add", "/devices/a", "SUBSYSTEM=net", "IFINDEX=-1", "INTERFACE=x"), "bad_fields"),
])
def test_malformed_uevents_are_counted(payload: bytes, counter: str) -> None:
    source, sink = decoder(), EventSink()
    source.decode(sink, payload)
    s = source.stats()
    assert s[counter] == 1
    events = events_of(sink)
    if counter == "malformed":
        assert events == [] and s.events == 0
    else:  # the event goes, without the value that did not parse
        assert len(events) == 1 and s.events == 1


def test_an_event_too_large_for_a_batch_is_dropped_and_counted_in_no_kind() -> None:
    """A net `move` whose INTERFACE does not fit a 1 KiB batch: dropped and counted, and not in
    the `net` counter, which counts the events sent (fuzz_uevent found it counted there:
    native/fuzz/regressions/uevent)."""
    source = decoder()
    sink = EventSink(SinkOptions(batch_bytes=1024))
    fits = uevent("move", "/devices/virtual/net/veth0", "SUBSYSTEM=net", "INTERFACE=veth0")
    huge = uevent("move", "/devices/virtual/net/veth0", "SUBSYSTEM=net",
                  "INTERFACE=" + "v" * 2000)
    source.decode(sink, fits)
    source.decode(sink, huge)
    s = source.stats()
    assert (s.uevents, s.events, s.dropped, s.net) == (2, 1, 1, 1)
    assert [e["name"] for e in events_of(sink)] == ["veth0"]


def test_a_devpath_that_climbs_out_of_sysfs_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "sys" / "devices").mkdir(parents=True)
    (tmp_path / "product").write_text("outside\n")
    source, sink = decoder(tmp_path / "sys"), EventSink()
    source.decode(sink, uevent("add", "/devices/..", "SUBSYSTEM=usb", "DEVTYPE=usb_device"))
    (event,) = events_of(sink)
    assert "product" not in event and source.stats().sysfs_missing == 0


def test_strings_that_are_not_utf8_travel_as_bytes(tmp_path: Path) -> None:
    dev = tmp_path / "sys" / "devices" / "usb1" / "1-1"
    dev.mkdir(parents=True)
    (dev / "product").write_bytes(b"\xffBad\xfe\n")
    source, sink = decoder(tmp_path / "sys"), EventSink()
    source.decode(sink, uevent("add", "/devices/usb1/1-1", "SUBSYSTEM=usb",
                               "DEVTYPE=usb_device"))
    batch = sink.seal()[0]
    (event,) = msgpack.unpackb(batch, raw=False, unicode_errors="strict")
    assert event["product"] == b"\xffBad\xfe"


# ---------------------------------------------------------------------------------------------
# rtnetlink link messages


def link_message(ifindex: int, carrier: int | None, flags: int = IFF_UP, name: bytes = b"pv0",
                 kind: int = RTM_NEWLINK, seq: int = 0, port: int = 0, nl_flags: int = 0) -> bytes:
    attrs = struct.pack("=HH", 4 + len(name) + 1, IFLA_IFNAME) + name + b"\0"
    attrs = attrs.ljust((len(attrs) + 3) & ~3, b"\0")
    if carrier is not None:
        attrs += struct.pack("=HHB3x", 5, IFLA_CARRIER, carrier)
    body = struct.pack("=BxHiII", 0, 1, ifindex, flags, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, nl_flags, seq, port) + body


def test_carrier_changes_give_events_and_a_first_sight_only_remembers() -> None:
    source, sink = decoder(), EventSink()
    # Two links seen for the first time (as the dump at listen gives them, several messages
    # in one datagram): remembered without events.
    dump = (link_message(7, 1, seq=DUMP_SEQ, port=99, nl_flags=NLM_F_MULTI)
            + link_message(8, 0, seq=DUMP_SEQ, port=99, nl_flags=NLM_F_MULTI))
    assert source.decode(sink, dump, socket="link") == 0
    assert source.decode(sink, link_message(7, 1), socket="link") == 0  # unchanged
    assert source.decode(sink, link_message(7, 0), socket="link") == 1  # pulled
    assert source.decode(sink, link_message(8, 1), socket="link") == 1  # plugged
    # Without IFLA_CARRIER, IFF_LOWER_UP says it.
    assert source.decode(sink, link_message(7, None, IFF_UP | IFF_LOWER_UP), socket="link") == 1
    # A link made later is remembered the same way: its arrival is the uevent's `add`.
    assert source.decode(sink, link_message(9, 1, name=b"new0"), socket="link") == 0
    assert source.decode(sink, link_message(9, 0, name=b"new0", kind=RTM_DELLINK),
                         socket="link") == 0
    assert source.stats().links == 2
    got = [(e["op"], e["name"], e["ifindex"], e["src"], e["kind"]) for e in events_of(sink)]
    assert got == [("carrier_down", "pv0", 7, "rtnl", "net"), ("carrier_up", "pv0", 8, "rtnl", "net"),
                   ("carrier_up", "pv0", 7, "rtnl", "net")]
    assert source.stats().carrier == 3


def test_link_messages_bounds() -> None:
    source, sink = PeripheralSource(PeripheralOptions(listen=False, max_links=1)), EventSink()
    source.decode(sink, link_message(1, 1) + link_message(2, 1), socket="link")
    assert source.stats().link_overflow == 1
    bad_attr = bytearray(link_message(3, 1))
    struct.pack_into("=H", bad_attr, 32, 0xFFFF)  # an attribute longer than the message
    source.decode(sink, bytes(bad_attr), socket="link")
    source.decode(sink, struct.pack("=IHHII", 0xFFFF, RTM_NEWLINK, 0, 0, 0), socket="link")
    source.decode(sink, link_message(3, 1)[:20], socket="link")  # a cut ifinfomsg
    assert source.stats().malformed == 3 and source.stats().events == 0


def test_decoder_calls_stay_flat(sysfs: Path) -> None:
    payloads = [c["payload"].encode() for c in fixture()["cases"]]
    source, sink = decoder(sysfs), EventSink()
    link = link_message(5, 1) + link_message(5, 0)

    def cycle() -> None:
        for p in payloads:
            source.decode(sink, p)
        source.decode(sink, payloads[0], sender=7)
        source.decode(sink, link, socket="link")
        sink.seal()
        source.stats()

    assert_rss_flat(cycle, calls=2000, name="am_periph_decode (2,000 rounds of 16 datagrams)")


def test_handle_calls_stay_flat() -> None:
    def cycle() -> None:
        with PeripheralSource(PeripheralOptions(listen=False, sysfs_root="/sys")) as s:
            s.stats()
            s.filenos()

    assert_rss_flat(cycle, calls=5000, name="am_periph_new/set_sysfs/stats/free")


def test_listen_and_close_stay_flat() -> None:
    """The sockets, the link dump read at listen, the drain of an idle source, the close."""
    sink = EventSink()

    def cycle() -> None:
        with PeripheralSource() as s:
            s.drain(sink)
            s.stats()

    assert_rss_flat(cycle, calls=500, name="am_periph_listen/drain/free (500 calls)")


# ---------------------------------------------------------------------------------------------
# live: the kernel's own uevents and link messages (hold the kernel's namespace lock)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture()
def veth() -> Iterator[tuple[str, str, str]]:
    """A veth pair: (our end, in this namespace; its peer; the peer's namespace)."""
    if os.geteuid() != 0:
        pytest.skip("making interfaces and namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    ns, ours, peer = f"periph-{tag}", f"pva{tag}", f"pvb{tag}"
    ip("netns", "add", ns)
    try:
        yield ours, peer, ns
    finally:
        subprocess.run(["ip", "link", "del", ours], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def drain_for(source: PeripheralSource, sink: EventSink, until: Any, seconds: float = 5.0
              ) -> list[dict[str, Any]]:
    """Drains until `until(events)` holds (or seconds pass); the events seen."""
    events: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while source.drain(sink):
            pass
        events.extend(events_of(sink))
        if until(events):
            break
        time.sleep(0.05)
    return events


@pytest.mark.live
@pytest.mark.root
def test_live_interfaces_carrier_sysfs_uevent_and_a_spoof(veth: tuple[str, str, str]) -> None:
    ours, peer, ns = veth
    sink = EventSink()
    with PeripheralSource() as source:
        assert len(source.filenos()) == 2
        ip("link", "add", ours, "type", "veth", "peer", "name", peer, "netns", ns)
        ip("link", "set", ours, "up")
        ip("-n", ns, "link", "set", peer, "up")

        def mine(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in evs if e.get("name") == ours]

        seen = drain_for(source, sink, lambda evs: any(
            e["op"] == "carrier_up" for e in mine(evs)))
        ip("-n", ns, "link", "set", peer, "down")  # the peer pulls the cable
        seen += drain_for(source, sink, lambda evs: any(
            e["op"] == "carrier_down" for e in mine(evs)))
        Path(f"/sys/class/net/{ours}/uevent").write_text("add")
        seen += drain_for(source, sink, lambda evs: any(
            e.get("synthetic") for e in mine(evs)))
        spoofer = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        with spoofer:
            spoofer.sendto(uevent("add", "/devices/virtual/net/spoof0", "SUBSYSTEM=net",
                                  "INTERFACE=spoof0", "IFINDEX=999"), (0, 1))
        seen += drain_for(source, sink, lambda evs: source.stats().spoofed >= 1)
        ip("link", "del", ours)
        seen += drain_for(source, sink, lambda evs: any(
            e["op"] == "remove" for e in mine(evs)))
        stats = source.stats()
    ops = [(e["src"], e["op"]) for e in mine(seen)]
    assert ("uevent", "add") in ops and ("rtnl", "carrier_up") in ops
    assert ("rtnl", "carrier_down") in ops and ("uevent", "remove") in ops
    assert ops.index(("rtnl", "carrier_up")) < ops.index(("rtnl", "carrier_down"))
    synthetic = [e for e in mine(seen) if e.get("synthetic")]
    assert synthetic and synthetic[0]["op"] == "add" and synthetic[0]["kind"] == "net"
    added = next(e for e in mine(seen) if e["op"] == "add")
    assert added["devpath"] == f"/devices/virtual/net/{ours}" and added["ifindex"] > 0
    assert stats.spoofed >= 1 and not [e for e in seen if e.get("name") == "spoof0"]
    assert stats.dumps == 1 and stats.malformed == 0 and stats.truncated == 0


@pytest.mark.live
@pytest.mark.root
def test_agent_follows_peripheral_message_frequency_and_disabled_live(
        tmp_path: Path, veth: tuple[str, str, str]) -> None:
    """Peripheral in the agent, patched live as the twin does: its events go to the lane it
    is in when they happen (Low, its default, then High), and none after it is disabled."""
    from test_runtime import agent, delivered

    from agent.config import Frequency

    ours, peer, ns = veth
    with agent(tmp_path, {"Process_Disabled": True, "Peripheral_Disabled": False}) as h:
        state = h.agent.collectors["Peripheral"].collector.state
        assert (state.state, state.source) == ("running", "uevent+rtnetlink")
        ip("link", "add", ours, "type", "veth", "peer", "name", peer, "netns", ns)
        ip("-n", ns, "link", "set", peer, "up")
        h.spin(0.5)
        h.patch({"Peripheral_MessageFrequency": "High"})
        ip("link", "set", ours, "up")  # both ends up: carrier up, in the High lane
        # The kernel's linkwatch sends a carrier change up to a second after it happens.
        collector = h.agent.collectors["Peripheral"].collector
        assert isinstance(collector, PeripheralCollector) and collector.source is not None
        end = time.monotonic() + 5
        while collector.source.stats().carrier == 0 and time.monotonic() < end:
            h.spin(0.1)
        h.patch({"Peripheral_Disabled": True})
        h.spin(0.2)
        ip("link", "del", ours)  # not seen: disabled
        h.spin(0.5)
        for prio in (Frequency.HIGH, Frequency.MEDIUM, Frequency.LOW):
            h.agent.close_lane(h.agent.lanes[prio])
        h.spin(0.1)
    envelopes = delivered(h.data)
    mine = [(env["prio"], ev["op"]) for env in envelopes for ev in env["events"]
            if ev["t"] == "periph" and ev.get("name") == ours]
    assert ("Low", "add") in mine and ("High", "carrier_up") in mine
    assert "remove" not in [op for _, op in mine]  # deleted after Peripheral_Disabled
