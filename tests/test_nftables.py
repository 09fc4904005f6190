"""The nftables reader (native/nftables.c under firewall.gather) against `nft -j list ruleset` on
the same rulesets in a fresh network namespace: every chain with its hook, priority, type and
policy; every rule in order with its handle, its verdict, and its port and address matches
wherever nft shows them as a plain value, a prefix, a range or an anonymous set.

Then the decoder on its own (NftReader.decode, no privilege needed): recordings of real
rulesets (tests/fixtures/nftables/*.bin, made by tests/nft_record.py) decode to the events the
Python reader it replaced made of them (the .json beside each, recorded with it); crafted
messages for what no nft ruleset makes (open ranges, masks, IPv6 texts against ipaddress,
bad lengths, ranges that do not hold, the bounds); any bytes never crash it. Live, a snapshot
equals the decoding of a recording of the same ruleset, and the generation moves with a
change."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import nft_record
import pytest
from conftest import skip_unless_ci
from hypothesis import given, settings
from hypothesis import strategies as st
from nft_record import nla
from test_inv_firewall import RULESET

from agent.native._base import CoreArgumentError
from agent.native.nftables import NftOptions, NftReader, NftResult

# More shapes: nat, bridge and netdev tables, interval sets, ranges, goto, notrack.
MORE = """\
table ip nat {
  chain post { type nat hook postrouting priority 100; policy accept; oifname "eth0" masquerade; }
  chain pre { type nat hook prerouting priority -100; tcp dport 8080 dnat to 10.0.0.2:80; }
}
table bridge br {
  chain fw { type filter hook forward priority 0; ip protocol icmp accept; }
}
table netdev nd {
  chain ing { type filter hook ingress device lo priority 0; ip saddr 1.2.3.4 drop; }
}
table inet x {
  set s6 { type ipv6_addr; flags interval; elements = { 2001:db8::/32, fe80::1-fe80::9 }; }
  chain c {
    ip6 saddr != @s6 tcp dport 1024-2000 drop
    meta l4proto { tcp, udp } th dport 53 accept
    meta skuid 1000 reject with icmp port-unreachable
    udp sport 67 udp dport 68 goto d
    ip daddr { 10.0.0.0/8, 192.168.0.1 } tcp dport != 22 return
  }
  chain d { tcp dport 1-65535 notrack; }
}
"""

GATHER = (
    "import sys, msgpack\n"
    "from agent.inventory import firewall\n"
    "s = firewall.gather()\n"
    "sys.stdout.buffer.write(msgpack.packb([s.events, s.errors]))\n"
)

VERDICTS = ("accept", "drop", "reject", "return", "jump", "goto", "masquerade", "snat", "dnat",
            "notrack", "queue")


@pytest.fixture()
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        skip_unless_ci("iproute2 (ip) is not installed")
    if shutil.which("nft") is None:
        skip_unless_ci("nft is not installed (Debian package nftables)")
    name = f"inv-nft-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        skip_unless_ci(f"cannot create a network namespace: {done.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ours(ns: str) -> list[dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", GATHER],
                         check=True, capture_output=True, env=env).stdout
    events, errors = msgpack.unpackb(out, raw=False)
    assert errors == []
    return list(events)


def _theirs(ns: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"],
                         check=True, capture_output=True).stdout
    return list(json.loads(out)["nftables"])


def _value_texts(right: Any) -> list[str] | None:
    """What a match's right side shows as our texts, or None when it is no plain value."""
    if isinstance(right, (int, str)):
        return None if str(right).startswith("@") else [str(right)]
    if isinstance(right, dict) and "prefix" in right:
        return [f"{right['prefix']['addr']}/{right['prefix']['len']}"]
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        return [f"{low}-{high}"]
    if isinstance(right, dict) and "set" in right:
        texts: list[str] = []
        for item in right["set"]:
            sub = _value_texts(item)
            if sub is None:
                return None
            texts += sub
        return texts
    return None


def _expected_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """The verdict and the port and address matches nft shows for one rule."""
    expected: dict[str, Any] = {}
    for expr in rule["expr"]:
        for name in VERDICTS:
            if name in expr:
                target = expr[name].get("target") if isinstance(expr[name], dict) else None
                expected["verdict"] = f"{name} {target}" if target else name
        match = expr.get("match")
        if not match or match["op"] not in ("==", "!="):
            continue
        payload = match["left"].get("payload") if isinstance(match["left"], dict) else None
        if not payload or payload.get("field") not in ("sport", "dport", "saddr", "daddr"):
            continue
        texts = _value_texts(match["right"])
        if texts is None:
            continue
        negate = "!" if match["op"] == "!=" else ""
        expected.setdefault(payload["field"], []).extend(negate + t for t in texts)
    return expected


def _compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> int:
    chains = {(c["family"], c["table"], c["name"]): c for c in
              (item["chain"] for item in theirs if "chain" in item)}
    our_chains = {(e["nfam"], e["table"], e["chain"]): e for e in ours if e["t"] == "fwchain"}
    assert set(our_chains) == set(chains)
    for key, chain in chains.items():
        mine = our_chains[key]
        for field, our_key in (("hook", "hook"), ("prio", "prio"), ("type", "ctype"),
                               ("policy", "policy")):
            assert mine.get(our_key) == chain.get(field), (key, field)
    rules = [item["rule"] for item in theirs if "rule" in item]
    our_rules = [e for e in ours if e["t"] == "fwrule"]
    assert [(r["family"], r["table"], r["chain"], r["handle"]) for r in rules] == [
        (e["nfam"], e["table"], e["chain"], e["handle"]) for e in our_rules]
    compared = 0
    for rule, mine in zip(rules, our_rules):
        expected = _expected_rule(rule)
        for field, values in expected.items():
            if field == "verdict":
                assert mine.get("verdict") == values, (rule, mine)
            else:
                assert sorted(mine.get(field, [])) == sorted(values), (field, rule, mine)
            compared += 1
    return compared


@pytest.mark.live
@pytest.mark.root
@pytest.mark.parametrize("ruleset", [RULESET, MORE], ids=["firewall-test", "more-shapes"])
def test_reader_agrees_with_nft_json(netns: str, ruleset: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset.encode(),
                   check=True)
    compared = _compare(_ours(netns), _theirs(netns))
    assert compared >= 15


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nftables"
RECORDINGS = sorted(p.stem for p in FIXTURES.glob("*.bin"))


def _without_ts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "ts"} for e in events]


@pytest.mark.parametrize("name", RECORDINGS)
def test_recordings_decode_to_what_the_python_reader_made(name: str) -> None:
    """Each recording against the events (key order included) and the volatile flag that
    the Python reader this decoder replaced made of the same ruleset."""
    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    with NftReader() as reader:
        result = reader.decode(7, (FIXTURES / f"{name}.bin").read_bytes())
        stats = reader.stats()
    assert result.errors == [] and result.tables > 0
    assert {e["ts"] for e in result.events} == {7}
    got = _without_ts(result.events)
    assert got == expected["events"]
    assert [list(e) for e in got] == [list(e) for e in expected["events"]]
    assert result.volatile == expected["volatile"]
    assert stats.malformed == 0 and stats.undecodable == 0
    assert stats.events == len(result.events)


# ---- crafted messages

SUBSYS = 10 << 8
NEWTABLE, NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM = 0, 3, 6, 9, 12
NESTED = 0x8000
PAYLOAD_NETWORK, PAYLOAD_TRANSPORT = 1, 2
EQ, NEQ, LT, LTE, GT, GTE = range(6)


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _u32(value: int) -> bytes:
    return struct.pack("!I", value & 0xFFFFFFFF)


def _nest(number: int, *attrs: bytes) -> bytes:
    return nla(number | NESTED, b"".join(attrs))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(1, nla(1, _s(name)), _nest(2, *attrs))


def _payload(dreg: int, base: int, offset: int, length: int) -> bytes:
    return _expr("payload", nla(1, _u32(dreg)), nla(2, _u32(base)), nla(3, _u32(offset)),
                 nla(4, _u32(length)))


def _cmp(op: int, value: bytes, sreg: int = 1) -> bytes:
    return _expr("cmp", nla(1, _u32(sreg)), nla(2, _u32(op)), _nest(3, nla(1, value)))


def _verdict(code: int) -> bytes:
    return _expr("immediate", nla(1, _u32(0)),
                 _nest(2, _nest(2, nla(1, struct.pack("!i", code)))))


def _msg(kind: int, family: int, *attrs: bytes) -> bytes:
    return nft_record.message(SUBSYS | kind, family, b"".join(attrs), 1)


def _ruleset(family: int, *rules: list[bytes]) -> bytes:
    """Table t with base chain c (input, priority -5, policy drop) and the rules."""
    out = _msg(NEWTABLE, family, nla(1, _s("t")))
    out += _msg(NEWCHAIN, family, nla(1, _s("t")), nla(3, _s("c")),
                _nest(4, nla(1, _u32(1)), nla(2, _u32(-5))), nla(5, _u32(0)),
                nla(7, _s("filter")))
    for handle, exprs in enumerate(rules, 1):
        out += _msg(NEWRULE, family, nla(1, _s("t")), nla(2, _s("c")),
                    nla(3, struct.pack("!Q", handle)), _nest(4, *exprs))
    return out


def _decode(data: bytes, options: NftOptions | None = None) -> tuple[NftResult, Any]:
    with NftReader(options) as reader:
        return reader.decode(1, data), reader.stats()


def test_crafted_ranges_masks_and_families() -> None:
    dport = _payload(1, PAYLOAD_TRANSPORT, 2, 2)
    result, _ = _decode(_ruleset(
        1,  # inet: no address family until a rule says which
        [dport, _cmp(GT, b"\x00\x09"), _cmp(LT, b"\x00\x15"), _verdict(1)],
        [dport, _cmp(GTE, b"\x04\x00"), _verdict(0)],
        [dport, _cmp(LTE, b"\x00\x07"), _verdict(-5)],
        # meta nfproto ipv6, then ip6 saddr with a /20 mask
        [_expr("meta", nla(1, _u32(1)), nla(2, _u32(15))), _cmp(EQ, b"\x0a"),
         _payload(1, PAYLOAD_NETWORK, 8, 16),
         _expr("bitwise", nla(1, _u32(1)), nla(2, _u32(1)), nla(3, _u32(16)),
               _nest(4, nla(1, b"\xff\xff\xf0" + bytes(13))), _nest(5, nla(1, bytes(16)))),
         _cmp(EQ, bytes.fromhex("20010db8" + "00" * 12)), _verdict(1)],
        # ct state & (established|related) != 0
        [_expr("ct", nla(1, _u32(1)), nla(2, _u32(0))),
         _expr("bitwise", nla(1, _u32(1)), nla(2, _u32(1)), nla(3, _u32(4)),
               _nest(4, nla(1, struct.pack("<I", 6))), _nest(5, nla(1, bytes(4)))),
         _cmp(NEQ, bytes(4)), _verdict(1)],
        # a compared register nothing loaded, a verdict to a chain, an unknown expression
        [_cmp(EQ, b"\x01", sreg=3), _expr("nosuch"),
         _expr("immediate", nla(1, _u32(0)),
               _nest(2, _nest(2, nla(1, struct.pack("!i", -3)), nla(2, _s("other")))))],
    ))
    assert result.errors == []
    chain, *rules = result.events
    assert chain == {"t": "fwchain", "ts": 1, "src": "nft", "nfam": "inet", "table": "t",
                     "chain": "c", "hook": "input", "prio": -5, "ctype": "filter",
                     "policy": "drop", "action": "deny"}
    fields = [{k: v for k, v in r.items() if k in ("fam", "saddr", "dport", "ct", "verdict",
                                                    "extra")} for r in rules]
    assert fields == [
        {"dport": ["10-20"], "verdict": "accept"},
        {"dport": [">=1024"], "verdict": "drop"},
        {"dport": ["<=7"], "verdict": "return"},
        {"fam": "inet6", "saddr": ["2001:db8::/20"], "verdict": "accept"},
        {"ct": ["established", "related"], "verdict": "accept"},
        {"verdict": "jump other", "extra": ["cmp", "nosuch"]},
    ]
    assert [r["action"] for r in rules] == ["allow", "deny", "other", "allow", "allow", "other"]
    assert [r["pos"] for r in rules] == [1, 2, 3, 4, 5, 6]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=4, max_size=4))
def test_address_texts_are_ipaddress_texts(v6: bytes, v4: bytes) -> None:
    rules = _ruleset(10, [_payload(1, PAYLOAD_NETWORK, 24, 16), _cmp(EQ, v6)])
    rules += _ruleset(2, [_payload(1, PAYLOAD_NETWORK, 12, 3), _cmp(NEQ, v4[:3])])
    result, _ = _decode(rules)
    daddr, saddr = (e.get("daddr") or e.get("saddr") for e in result.events if e["t"] == "fwrule")
    assert daddr == [str(ipaddress.IPv6Address(v6))]
    assert saddr == [f"!{ipaddress.IPv4Address(v4[:3] + bytes(1))}/24"]


def test_a_range_that_does_not_hold_leaves_its_rule_out() -> None:
    saddr = _payload(1, PAYLOAD_NETWORK, 12, 4)
    backwards = _expr("range", nla(1, _u32(1)), nla(2, _u32(0)),
                      _nest(3, nla(1, bytes([10, 0, 0, 9]))), _nest(4, nla(1, bytes([10, 0, 0, 1]))))
    result, stats = _decode(_ruleset(2, [saddr, backwards, _verdict(0)],
                                     [saddr, _cmp(GT, b"\xff\xff\xff\xff")], [_verdict(1)]))
    assert result.errors == [
        "nft rule ip t c: undecodable: last IP address must be greater than first",
        "nft rule ip t c: undecodable: int too big to convert"]
    rules = [e for e in result.events if e["t"] == "fwrule"]
    assert [(r["pos"], r["verdict"]) for r in rules] == [(3, "accept")]
    assert stats.undecodable == 2


def test_bad_lengths_are_counted_and_what_came_before_is_kept() -> None:
    good = _ruleset(2, [_payload(1, PAYLOAD_TRANSPORT, 2, 2), _cmp(EQ, b"\x00\x16"),
                        _verdict(1)])
    # The rule's last attribute claims more bytes than its message holds.
    cut = bytearray(good)
    at = cut.rfind(struct.pack("=H", NESTED | 4))  # the expressions' nest header
    struct.pack_into("=H", cut, at - 2, 0xFFF0)
    result, stats = _decode(bytes(cut))
    assert stats.malformed >= 1
    [rule] = [e for e in result.events if e["t"] == "fwrule"]
    assert "dport" not in rule and rule["handle"] == 1 and rule["action"] == "other"
    # A message longer than the data given: decoding stops there, counted.
    result, stats = _decode(good + struct.pack("=IHHII", 4096, SUBSYS | NEWRULE, 0, 1, 0))
    assert stats.malformed == 1 and len(result.events) == 2


def test_bounds_give_an_error_never_a_partial_event() -> None:
    data = (FIXTURES / "firewall-test.bin").read_bytes()
    result, stats = _decode(data, NftOptions(max_output_bytes=512))
    assert result.events == [] and result.tables == -1
    assert result.errors == ["nftables: more than max_output_bytes of events"]
    assert stats.overflow >= 1
    # Rules left out as undecodable, then a result thrown away with their errors: the stats
    # count neither its rules nor those left out.
    result, stats = _decode(data, NftOptions(max_output_bytes=1024, max_rule_bytes=256))
    assert result.errors == ["nftables: more than max_output_bytes of events"]
    assert stats.rules == 0 and stats.undecodable == 0 and stats.events == 0
    result, _ = _decode(data, NftOptions(max_set_elements=1))
    assert "nft set filt/blocked: more than max_set_elements elements" in result.errors
    rule = next(e for e in result.events if e.get("verdict") == "drop" and "saddr" in e
                and e["saddr"][0].startswith("@"))
    assert rule["saddr"] == ["@blocked"]
    result, _ = _decode(data, NftOptions(max_dump_bytes=4096))
    assert result.errors == ["nftables: more than max_dump_bytes of messages"]
    with pytest.raises(CoreArgumentError):
        NftReader(NftOptions(max_rule_bytes=1))


_RECORDED = b"".join((FIXTURES / f"{name}.bin").read_bytes() for name in RECORDINGS)


def _edit(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in edits:
        out[index % len(out)] = value
    return bytes(out)


_ANY_BYTES = st.one_of(
    st.binary(max_size=2048),
    # The recordings with bytes changed: lengths and types that are almost right.
    st.lists(st.tuples(st.integers(0, len(_RECORDED) - 1), st.integers(0, 255)),
             min_size=1, max_size=8).map(lambda edits: _edit(_RECORDED, edits)),
)


@settings(max_examples=300, deadline=None)
@given(_ANY_BYTES)
def test_decode_never_fails_on_any_bytes(data: bytes) -> None:
    """Whatever the socket hands over, the decoder makes a result whose events are whole."""
    result, stats = _decode(data)
    assert result.tables >= -1
    for event in result.events:
        assert event["t"] in ("fwchain", "fwrule") and event["src"] == "nft"
        if event["t"] == "fwrule":
            assert event["action"] in ("allow", "deny", "other") and event["pos"] >= 1
    assert stats.events == len(result.events)


# ---- live


@pytest.mark.live
@pytest.mark.root
@pytest.mark.parametrize("name", ["wide", "iptables"])
def test_snapshot_equals_the_recording_and_the_python_reader(netns: str, name: str) -> None:
    """In a fresh namespace: the live snapshot of a ruleset is what the Python reader made of
    it (the fixture), and what decoding a recording of it taken now makes."""
    run = ["ip", "netns", "exec", netns]
    if name == "iptables":
        if shutil.which("iptables-nft") is None:
            skip_unless_ci("iptables-nft is not installed (Debian package iptables)")
        for line in (FIXTURES / "iptables.sh").read_text().splitlines():
            if line and not line.startswith("#"):
                subprocess.run(run + line.split(), check=True)
    else:
        subprocess.run(run + ["nft", "-f", str(FIXTURES / f"{name}.nft")], check=True)
    script = (
        "import sys, msgpack\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import nft_record\n"
        "from agent.native.nftables import NftReader\n"
        "r = NftReader()\n"
        "live = r.snapshot(5)\n"
        "recorded = r.decode(5, nft_record.record())\n"
        "sys.stdout.buffer.write(msgpack.packb([live.events, live.errors, recorded.events,\n"
        "    recorded.errors, r.stats().memory]))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(run + [sys.executable, "-c", script], check=True, capture_output=True,
                         env=env).stdout
    live, live_errors, recorded, recorded_errors, memory = msgpack.unpackb(out, raw=False)
    assert live_errors == [] and recorded_errors == []
    assert live == recorded
    assert _without_ts(live) == json.loads((FIXTURES / f"{name}.json").read_text())["events"]
    assert memory < 64 * 1024, "the snapshot's buffers are freed when it ends"


@pytest.mark.live
@pytest.mark.root
def test_generation_moves_with_a_change(netns: str) -> None:
    script = (
        "import subprocess, msgpack, sys\n"
        "from agent.native.nftables import NftReader\n"
        "r = NftReader()\n"
        "gens = [r.generation(), r.generation()]\n"
        "subprocess.run(['nft', 'add', 'table', 'ip', 'moved'], check=True)\n"
        "gens.append(r.generation())\n"
        "sys.stdout.buffer.write(msgpack.packb(gens))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                         check=True, capture_output=True, env=env).stdout
    first, again, moved = msgpack.unpackb(out)
    assert first is not None and again == first and moved is not None and moved != first


@pytest.mark.live
@pytest.mark.root
def test_a_ruleset_of_many_datagrams(netns: str, tmp_path: Path) -> None:
    """600 rules and a set of 3,000 addresses: the dumps and the set's elements span many
    datagrams; every rule comes once, in order, with its port, and the set's elements all."""
    lines = ["table inet big {",
             "  set many { type ipv4_addr; elements = { "
             + ", ".join(f"10.{i // 250}.{i % 250}.1" for i in range(3000)) + " }; }",
             "  chain in {", "    type filter hook input priority 0; policy accept;"]
    lines += [f"    tcp dport {1000 + i} accept" for i in range(600)]
    lines += ["    ip saddr @many drop", "  }", "}"]
    ruleset = tmp_path / "big.nft"
    ruleset.write_text("\n".join(lines) + "\n")
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(ruleset)], check=True)
    events = _ours(netns)
    rules = [e for e in events if e["t"] == "fwrule"]
    assert [r["pos"] for r in rules] == list(range(1, 602))
    assert [r["dport"] for r in rules[:600]] == [[str(1000 + i)] for i in range(600)]
    many = rules[600]["saddr"]
    assert len(many) == 3000 and many == sorted(many, key=lambda a: ipaddress.ip_address(a))
    assert set(many) == {f"10.{i // 250}.{i % 250}.1" for i in range(3000)}
