"""The nftables reader (agent.inventory.nfnetlink under firewall.gather) against `nft -j list
ruleset` on the same rulesets in a fresh network namespace: every chain with its hook,
priority, type and policy; every rule in order with its handle, its verdict, and its port
and address matches wherever nft shows them as a plain value, a prefix, a range or an
anonymous set. Plus the reader's own framing on crafted attributes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from conftest import skip_unless_ci
from hypothesis import given, settings
from hypothesis import strategies as st
from test_inv_firewall import RULESET

from agent.inventory import nfnetlink
from agent.inventory.nft_generation import _generation_of

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


def _nla(number: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), number) + payload + bytes(-len(payload) % 4)


def _crafted_rule() -> bytes:
    expr = (_nla(1, b"cmp\x00") + _nla(2 | nfnetlink.NLA_F_NESTED,
            _nla(1, struct.pack("!I", 1)) + _nla(2, struct.pack("!I", 1))
            + _nla(3, _nla(1, b"\x00\x16"))))
    return (_nla(1, b"filter\x00") + _nla(3, struct.pack("!Q", 7))
            + _nla(4, _nla(1, expr) + _nla(1, _nla(1, b"nosuchexpr\x00")))
            + _nla(99, b"ignored"))


def test_decode_names_values_and_stops_at_a_bad_length() -> None:
    rule = _crafted_rule()
    values = nfnetlink.decode(rule, nfnetlink.RULE)
    assert values["NFTA_RULE_TABLE"] == "filter" and values["NFTA_RULE_HANDLE"] == 7
    cmp, unknown = values["NFTA_RULE_EXPRESSIONS"]
    data = cmp.get_attr("NFTA_EXPR_DATA")
    assert data.get_attr("NFTA_CMP_SREG") == "NFT_REG_1"
    assert data.get_attr("NFTA_CMP_OP") == "NFT_CMP_NEQ"
    assert data.get_attr("NFTA_CMP_DATA").get_attr("NFTA_DATA_VALUE") == b"\x00\x16"
    assert unknown.get_attr("NFTA_EXPR_NAME") == "nosuchexpr"
    assert unknown.get_attr("NFTA_EXPR_DATA") is None
    # A length past the end: what came before is kept, nothing after it is read.
    cut = _nla(1, b"t\x00") + struct.pack("=HH", 200, 2) + b"chain\x00"
    assert nfnetlink.decode(cut, nfnetlink.RULE) == {"NFTA_RULE_TABLE": "t"}


def test_generation_answer_is_checked() -> None:
    head = struct.Struct("=IHHII")
    body = bytes(4) + _nla(1, struct.pack("!I", 42))
    good = head.pack(head.size + len(body), (10 << 8) | 15, 0, 1, 0) + body
    assert _generation_of(good) == 42
    assert _generation_of(good[:-4]) is None  # shorter than it says
    error = head.pack(head.size + 4, 2, 0, 1, 0) + struct.pack("=i", -1)
    assert _generation_of(error) is None


_ANY_BYTES = st.one_of(
    st.binary(max_size=512),
    # The crafted rule with bytes changed: lengths and types that are almost right.
    st.lists(st.tuples(st.integers(0, len(_crafted_rule()) - 1), st.integers(0, 255)),
             min_size=1, max_size=6).map(
        lambda edits: bytes(_edit(bytearray(_crafted_rule()), edits))),
)


def _edit(data: bytearray, edits: list[tuple[int, int]]) -> bytearray:
    for index, value in edits:
        data[index] = value
    return data


@settings(max_examples=300, deadline=None)
@given(_ANY_BYTES, st.sampled_from(["RULE", "CHAIN", "SET", "SET_ELEM_LIST"]))
def test_decode_never_raises_on_any_bytes(data: bytes, schema: str) -> None:
    """Whatever the socket hands over, the decoder returns (what it could frame), and so does
    the generation check."""
    values = nfnetlink.decode(data, getattr(nfnetlink, schema))
    assert isinstance(values, dict)
    for expr in values.get("NFTA_RULE_EXPRESSIONS") or []:
        assert isinstance(expr, nfnetlink.Attrs)
    generation = _generation_of(data)
    assert generation is None or 0 <= generation < 1 << 32
