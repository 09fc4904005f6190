"""uevent datagrams -> `periph` events: the core's decoder beside a pure-Python decoder of the
same datagrams, same run, one CPU.

The input is AGENT_BENCH_UEVENTS datagrams (default 100,000; 2,000 with --benchmark-disable),
the recorded USB and block uevents of tests/fixtures/uevent/usb.json (a stick, a keyboard, a
hub: add, remove, bind, another subsystem) and network interfaces added and removed, in turn.

- core: agent.native.peripheral.PeripheralSource.decode, one call per datagram (as drain does
  in C, without the Python call per datagram that this loop adds), into an EventSink.
- python: the same parse in Python (split at NUL, the same checks, numbers and ids), the same
  events as dicts packed with msgpack-python.

Neither reads sysfs (the strings would measure the file system). Each peer is checked to have
given the same events (the core's, decoded, less `ts`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import measure
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="uevent-decode")

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "uevent" / "usb.json"
ROUNDS = 5


def _net(action: str, n: int) -> bytes:
    devpath = f"/devices/virtual/net/veth{n}"
    env = [f"ACTION={action}", f"DEVPATH={devpath}", "SUBSYSTEM=net", f"INTERFACE=veth{n}",
           f"IFINDEX={n + 2}", f"SEQNUM={n}"]
    return f"{action}@{devpath}\0".encode() + "\0".join(env).encode() + b"\0"


@pytest.fixture(scope="module")
def datagrams(request: pytest.FixtureRequest) -> list[bytes]:
    quick = bool(request.config.getoption("benchmark_disable"))
    count = int(os.environ.get("AGENT_BENCH_UEVENTS") or (2_000 if quick else 100_000))
    recorded = [c["payload"].encode() for c in json.loads(FIXTURE.read_text())["cases"]]
    pool = recorded + [_net(a, n) for n in range(8) for a in ("add", "remove")]
    return [pool[i % len(pool)] for i in range(count)]


def core_decode(datagrams: list[bytes]) -> list[bytes]:
    from agent.native.peripheral import PeripheralOptions, PeripheralSource
    from agent.native.sink import EventSink

    source = PeripheralSource(PeripheralOptions(listen=False, sysfs_root=""))
    sink = EventSink()
    batches: list[bytes] = []
    decode = source.decode
    for datagram in datagrams:
        if sink.full():
            batches += sink.take()
        decode(sink, datagram)
    batches += sink.seal()
    assert source.stats().malformed == 0 and source.stats().dropped == 0
    return batches


# ---------------------------------------------------------------------------------------------
# pure Python

KINDS = {("usb", "usb_device"): "usb_device", ("usb", "usb_interface"): "usb_interface",
         ("block", "disk"): "block", ("block", "partition"): "block"}


def _triple(value: str | None, base: int, top: int) -> list[int] | None:
    if value is None:
        return None
    parts = value.split("/")
    try:
        numbers = [int(p, base) for p in parts]
    except ValueError:
        return None
    if len(numbers) != 3 or any(not 0 <= n <= top for n in numbers):
        return None
    return numbers


def _num(value: str | None, top: int) -> int | None:
    if value is None or not value.isdigit() or int(value) > top:
        return None
    return int(value)


def python_decode(datagrams: list[bytes]) -> list[bytes]:
    """The core's events, built in Python."""
    events: list[dict[str, Any]] = []
    for datagram in datagrams:
        head, _, body = datagram.partition(b"\0")
        action_h, at, devpath_h = head.partition(b"@")
        if not at:
            continue
        fields: dict[str, str] = {}
        for item in body.split(b"\0"):
            key, eq, value = item.partition(b"=")
            if eq:
                fields[key.decode()] = value.decode("utf-8", "surrogateescape")
        action, devpath, subsystem = (fields.get("ACTION"), fields.get("DEVPATH"),
                                      fields.get("SUBSYSTEM"))
        if (action is None or devpath is None or subsystem is None
                or action != action_h.decode() or devpath != devpath_h.decode()):
            continue
        kind = "net" if subsystem == "net" else KINDS.get((subsystem, fields.get("DEVTYPE", "")))
        if kind is None or not (action in ("add", "remove") or (kind == "net" and action == "move")):
            continue
        event: dict[str, Any] = {"t": "periph", "src": "uevent", "op": action, "kind": kind,
                                 "devpath": devpath}
        if kind.startswith("usb"):
            product = _triple(fields.get("PRODUCT"), 16, 0xFFFF)
            if product is not None:
                event.update(vendor_id=f"{product[0]:04x}", product_id=f"{product[1]:04x}",
                             bcd=f"{product[2]:04x}")
            cls = _triple(fields.get("TYPE" if kind == "usb_device" else "INTERFACE"), 10, 255)
            if cls is not None:
                event.update({"class": cls[0], "subclass": cls[1], "protocol": cls[2]})
            if kind == "usb_device":
                for key, name in (("BUSNUM", "bus"), ("DEVNUM", "dev")):
                    number = _num(fields.get(key), 0xFFFF)
                    if number is not None:
                        event[name] = number
        elif kind == "block":
            for key, name in (("DEVNAME", "name"), ("DEVTYPE", "devtype")):
                if key in fields:
                    event[name] = fields[key]
            for key, name in (("MAJOR", "major"), ("MINOR", "minor")):
                number = _num(fields.get(key), 0xFFFFFFFF)
                if number is not None:
                    event[name] = number
        else:
            if "INTERFACE" in fields:
                event["name"] = fields["INTERFACE"]
            number = _num(fields.get("IFINDEX"), 0x7FFFFFFF)
            if number is not None:
                event["ifindex"] = number
        events.append(event)
    return [msgpack.packb(events)]


def _decoded(batches: list[bytes]) -> list[dict[str, Any]]:
    out = [e for b in batches for e in msgpack.unpackb(b, raw=False)]
    for e in out:
        e.pop("ts", None)
    return out


def test_core(benchmark: BenchmarkFixture, datagrams: list[bytes], bench_cpu: int) -> None:
    batches = measure(benchmark, lambda: core_decode(datagrams), ROUNDS)
    events = len(_decoded(batches))
    assert events > 0
    benchmark.extra_info.update({"peer": "core", "datagrams": len(datagrams), "cpu": bench_cpu})


def test_python(benchmark: BenchmarkFixture, datagrams: list[bytes], bench_cpu: int) -> None:
    batches = measure(benchmark, lambda: python_decode(datagrams), ROUNDS)
    assert _decoded(batches) == _decoded(core_decode(datagrams)), \
        "the python peer did not produce the core's events"
    benchmark.extra_info.update({"peer": "python", "datagrams": len(datagrams),
                                 "cpu": bench_cpu})
