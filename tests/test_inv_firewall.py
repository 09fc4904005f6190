"""Firewall: rules created by the test in a fresh network namespace, with nft (IPv4 and IPv6,
accept and drop, with ports) and with legacy iptables, are reported with the right fields."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import skip_unless_ci

from agent.inventory import Snapshot, firewall

pytestmark = [pytest.mark.live, pytest.mark.root]

RULESET = """\
table inet filt {
  set blocked { type ipv4_addr; elements = { 10.9.9.9, 10.8.8.8 }; }
  chain input {
    type filter hook input priority 0; policy drop;
    tcp dport 22 accept
    ip saddr 192.168.1.0/24 udp dport { 53, 123 } accept
    ip6 saddr fe80::/10 tcp dport 8080 drop
    ip daddr 10.0.0.1 tcp sport 1000-2000 counter reject
    ip saddr @blocked drop
    iifname "lo" accept
    ct state established,related accept
    jump custom
  }
  chain custom {
    ip6 daddr 2001:db8::1 tcp dport { 443, 8000-8100 } accept
  }
}
table ip6 v6 {
  chain fw6 {
    type filter hook forward priority -10; policy accept;
    ip6 saddr 2001:db8:1::/48 udp dport != 53 drop
  }
}
"""

GATHER = (
    "import sys, msgpack\n"
    "from agent.inventory import firewall\n"
    "s = firewall.gather()\n"
    "sys.stdout.buffer.write(msgpack.packb([s.events, s.errors, s.skipped]))\n"
)


@pytest.fixture()
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        skip_unless_ci("iproute2 (ip) is not installed")
    name = f"inv-fw-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        skip_unless_ci(f"cannot create a network namespace: {done.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _gather_in(ns: str) -> Snapshot:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", GATHER],
                         check=True, capture_output=True, env=env).stdout
    events, errors, skipped = msgpack.unpackb(out, raw=False)
    return Snapshot(events, errors, skipped)


def _strip(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("ts", "handle")}


def test_nft_rules_in_a_fresh_namespace(netns: str) -> None:
    if shutil.which("nft") is None:
        skip_unless_ci("nft is not installed (Debian package nftables)")
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=RULESET, text=True,
                   check=True)
    snap = _gather_in(netns)
    assert snap.errors == []
    chains = [_strip(e) for e in snap.events if e["t"] == "fwchain"]
    rules = [_strip(e) for e in snap.events if e["t"] == "fwrule"]
    common = {"t": "fwchain", "src": "nft"}
    assert chains == [
        {**common, "nfam": "inet", "table": "filt", "chain": "input", "hook": "input", "prio": 0,
         "ctype": "filter", "policy": "drop", "action": "deny"},
        {**common, "nfam": "inet", "table": "filt", "chain": "custom"},
        {**common, "nfam": "ip6", "table": "v6", "chain": "fw6", "hook": "forward", "prio": -10,
         "ctype": "filter", "policy": "accept", "action": "allow"},
    ]
    base = {"t": "fwrule", "src": "nft", "nfam": "inet", "table": "filt", "chain": "input",
            "hook": "input", "prio": 0}
    assert rules == [
        {**base, "pos": 1, "proto": ["tcp"], "dport": ["22"], "verdict": "accept",
         "action": "allow"},
        {**base, "pos": 2, "fam": "inet", "proto": ["udp"], "saddr": ["192.168.1.0/24"],
         "dport": ["53", "123"], "verdict": "accept", "action": "allow"},
        {**base, "pos": 3, "fam": "inet6", "proto": ["tcp"], "saddr": ["fe80::/10"],
         "dport": ["8080"], "verdict": "drop", "action": "deny"},
        {**base, "pos": 4, "fam": "inet", "proto": ["tcp"], "daddr": ["10.0.0.1"],
         "sport": ["1000-2000"], "verdict": "reject", "action": "deny"},
        {**base, "pos": 5, "fam": "inet", "saddr": ["10.8.8.8", "10.9.9.9"], "verdict": "drop",
         "action": "deny"},
        {**base, "pos": 6, "iif": ["lo"], "verdict": "accept", "action": "allow"},
        {**base, "pos": 7, "ct": ["established", "related"], "verdict": "accept",
         "action": "allow"},
        {**base, "pos": 8, "verdict": "jump custom", "action": "other"},
        {"t": "fwrule", "src": "nft", "nfam": "inet", "table": "filt", "chain": "custom",
         "pos": 1, "fam": "inet6", "proto": ["tcp"], "daddr": ["2001:db8::1"],
         "dport": ["443", "8000-8100"], "verdict": "accept", "action": "allow"},
        {"t": "fwrule", "src": "nft", "nfam": "ip6", "table": "v6", "chain": "fw6",
         "hook": "forward", "prio": -10, "pos": 1, "fam": "inet6", "proto": ["udp"],
         "saddr": ["2001:db8:1::/48"], "dport": ["!53"], "verdict": "drop", "action": "deny"},
    ]


# The Firewall collector across intervals, in the namespace: each step's events (without
# ts), whether the step reused the last snapshot, and its errors.
COLLECTOR_STEPS = """\
import subprocess, sys, tempfile, msgpack
from pathlib import Path
from agent.collectors import CLASSES, Environment
collector = CLASSES["Firewall"](Environment(data_dir=Path(tempfile.mkdtemp())))
steps = []
def step(*nft):
    if nft:
        subprocess.run(["nft", *nft], check=True)
    before = collector.counters["unchanged"]
    snap = collector.gather()
    events = [{k: v for k, v in e.items() if k != "ts"} for e in snap.events]
    steps.append([events, collector.counters["unchanged"] - before, snap.errors,
                  len({e["ts"] for e in snap.events})])
step()
step()
step("add rule inet filt custom udp dport 9999 drop")
step()
step("-f", sys.argv[1])
step()
sys.stdout.buffer.write(msgpack.packb(steps))
"""

DYNAMIC = """\
table ip dyn {
  set seen { type ipv4_addr; flags dynamic,timeout; timeout 1m; }
  chain in {
    type filter hook input priority 0;
    ip saddr @seen drop
    ip protocol tcp add @seen { ip saddr }
  }
}
"""


def test_collector_dumps_again_only_when_the_generation_moves(
    netns: str, tmp_path: Path
) -> None:
    """An unchanged ruleset (same nftables generation) is not dumped again: the last events
    are sent under the new ts. A committed change is dumped at the next interval; a ruleset
    with a set filled from the packet path (no generation change) is dumped every time."""
    if shutil.which("nft") is None:
        skip_unless_ci("nft is not installed (Debian package nftables)")
    run = ["ip", "netns", "exec", netns]
    subprocess.run(run + ["nft", "-f", "-"], input=RULESET.encode(), check=True)
    dynamic = tmp_path / "dynamic.nft"
    dynamic.write_text(DYNAMIC)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(run + [sys.executable, "-c", COLLECTOR_STEPS, str(dynamic)],
                         check=True, capture_output=True, env=env).stdout
    steps = msgpack.unpackb(out, raw=False)
    assert [errors for _, _, errors, _ in steps] == [[]] * 6
    assert all(stamps == 1 for _, _, _, stamps in steps), "one ts per snapshot"
    assert [reused for _, reused, _, _ in steps] == [0, 1, 0, 1, 0, 0]
    first, second, added, after_added, dyn, dyn_again = (events for events, *_ in steps)
    assert second == first
    new = [e for e in added if e not in first]
    assert [(e["chain"], e.get("dport"), e.get("verdict")) for e in new] == [
        ("custom", ["9999"], "drop")]
    assert after_added == added
    assert any(e["table"] == "dyn" for e in dyn) and dyn_again == dyn
    # The reused snapshot is what a fresh gather sees.
    fresh = [{k: v for k, v in e.items() if k != "ts"} for e in _gather_in(netns).events]
    assert after_added == [e for e in fresh if e["table"] != "dyn"]


def test_empty_namespace_has_no_rules(netns: str) -> None:
    snap = _gather_in(netns)
    assert snap.events == [] and snap.errors == []
    assert "nftables: the ruleset is empty" in snap.skipped


def test_legacy_iptables_in_a_fresh_namespace(netns: str) -> None:
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        if shutil.which(tool) is None:
            skip_unless_ci(f"{tool} is not installed (Debian package iptables)")
    run = ["ip", "netns", "exec", netns]
    done = subprocess.run(run + ["iptables-legacy", "-A", "INPUT", "-s", "10.1.0.0/16", "-p",
                                 "tcp", "--dport", "22", "-j", "ACCEPT"], check=False, capture_output=True)
    if done.returncode != 0:
        skip_unless_ci(f"legacy iptables unavailable: {done.stderr.decode().strip()}")
    subprocess.run(run + ["iptables-legacy", "-P", "INPUT", "DROP"], check=True)
    subprocess.run(run + ["ip6tables-legacy", "-A", "OUTPUT", "-p", "udp", "-m", "multiport",
                          "--dports", "53,5000:5100", "-j", "DROP"], check=True)
    snap = _gather_in(netns)
    assert snap.errors == []
    rules = [_strip(e) for e in snap.events if e["t"] == "fwrule"]
    assert rules == [
        {"t": "fwrule", "src": "iptables", "nfam": "ip", "table": "filter", "chain": "INPUT",
         "pos": 1, "fam": "inet", "hook": "input", "prio": 0, "proto": ["tcp"],
         "saddr": ["10.1.0.0/16"], "dport": ["22"], "verdict": "accept", "action": "allow"},
        {"t": "fwrule", "src": "iptables", "nfam": "ip6", "table": "filter", "chain": "OUTPUT",
         "pos": 1, "fam": "inet6", "hook": "output", "prio": 0, "proto": ["udp"],
         "dport": ["53", "5000-5100"], "verdict": "drop", "action": "deny"},
    ]
    policies = {(e["nfam"], e["chain"]): e["policy"] for e in snap.events
                if e["t"] == "fwchain"}
    assert policies[("ip", "INPUT")] == "drop"
    assert policies[("ip6", "OUTPUT")] == "accept"


def test_iptables_save_parser_counts_what_it_cannot_read() -> None:
    snap = Snapshot()
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:MINE - [0:0]\n"
            "-A POSTROUTING -o eth0 -j MASQUERADE\n-A MINE ! -s 192.0.2.1/32 -m comment "
            '--comment "a b" -j RETURN\nthis is no iptables-save line\n'
            '-A MINE -m comment --comment "unterminated\nCOMMIT\n')
    events = firewall.parse_iptables_save(text, 4, 1, snap, "test")
    assert len(snap.errors) == 2
    rules = [e for e in events if e["t"] == "fwrule"]
    assert rules[0]["oif"] == ["eth0"] and rules[0]["verdict"] == "masquerade"
    assert rules[0]["prio"] == 100 and rules[0]["action"] == "other"
    assert rules[1]["saddr"] == ["!192.0.2.1"] and rules[1]["verdict"] == "return"
    chains = {e["chain"]: e for e in events if e["t"] == "fwchain"}
    assert chains["PREROUTING"]["prio"] == -100 and "policy" not in chains["MINE"]
