"""Firewall: the packet filter rules of the device, IPv4 and IPv6.

nftables is read over netlink (NETLINK_NETFILTER) and decoded in the C core
(native/nftables.c, agent.native.nftables): tables, chains (hook, priority, policy), rules and
the elements of the sets rules look up. Each rule's expressions are decoded register by
register (meta, payload, bitwise, cmp, range, lookup, ct, immediate verdicts, reject, nat, xt
multiport) into the fields a reader wants: protocol, addresses, ports, interfaces, action.
It costs the agent a few milliseconds and about 0.5 MB of peak RSS for 200 rules, so it runs
in the agent's process (no child), and only when the ruleset's generation moved (the
collector).

Legacy iptables (x_tables) cannot be read over netlink: iptables itself uses getsockopt on a
raw socket with a binary layout per table revision. When the kernel has legacy tables (listed
in /proc/net/ip_tables_names, ip6_tables_names) their rules are read from `iptables-save`
output of the legacy tool. iptables-nft rules live in nftables and are read there.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path

from agent.inventory import Event, Snapshot, now_ms, on_path, read_text
from agent.native.nftables import NftReader

# The match fields of a rule event, in the order docs/inventory.md lists them.
MATCH_KEYS = ("proto", "saddr", "daddr", "sport", "dport", "iif", "oif", "ct")


def action_class(verdict: str) -> str:
    """allow, deny or other, for a verdict or an iptables target."""
    word = verdict.split()[0].lower() if verdict else ""
    if word in ("accept",):
        return "allow"
    if word in ("drop", "reject"):
        return "deny"
    return "other"


# ---------------------------------------------------------------------------------------------
# nftables


def _gather_nft(snap: Snapshot, ts: int, reader: NftReader | None = None) -> int:
    """nftables events appended to snap (decoded in the core, native/nftables.c); returns the
    number of tables (0: nft is not in use; -1: the ruleset could not be dumped). `reader`:
    the caller's own (the collector keeps one), else one made for this call."""
    own = reader is None
    if reader is None:
        reader = NftReader()
    try:
        result = reader.snapshot(ts)
    finally:
        if own:
            reader.close()
    snap.events.extend(result.events)
    snap.errors.extend(result.errors)
    snap.volatile = snap.volatile or result.volatile
    return result.tables


# ---------------------------------------------------------------------------------------------
# legacy iptables


# Standard chain priorities of the x_tables tables (NF_IP_PRI_*), for the `prio` key.
_IPT_PRIORITIES = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}
_IPT_NAT_POST = 100


def _ipt_hook(chain: str) -> str | None:
    lower = chain.lower()
    return lower if lower in ("prerouting", "input", "forward", "output", "postrouting") else None


def _ipt_ports(value: str) -> list[str]:
    return [part.replace(":", "-") for part in value.split(",") if part]


def parse_iptables_save(text: str, ipv: int, ts: int, snap: Snapshot, what: str) -> list[Event]:
    """fwchain and fwrule events from `iptables-save` / `ip6tables-save` output."""
    events: list[Event] = []
    nfam = "ip" if ipv == 4 else "ip6"
    table = ""
    positions: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            positions = {}
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if not parts:
                snap.error(what, f"line {number}: empty chain line")
                continue
            chain = parts[0]
            event: Event = {"t": "fwchain", "ts": ts, "src": "iptables", "nfam": nfam,
                            "table": table, "chain": chain}
            hook = _ipt_hook(chain)
            if hook is not None and len(parts) > 1 and parts[1] != "-":
                event["hook"] = hook
                event["prio"] = (_IPT_NAT_POST if table == "nat" and hook in ("input",
                                 "postrouting") else _IPT_PRIORITIES.get(table, 0))
                event["policy"] = parts[1].lower()
                event["action"] = action_class(parts[1])
            events.append(event)
            continue
        if not line.startswith("-A "):
            snap.error(what, f"line {number}: not understood: {line[:80]!r}")
            continue
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            snap.error(what, f"line {number}: {exc}")
            continue
        chain = tokens[1] if len(tokens) > 1 else ""
        positions[chain] = positions.get(chain, 0) + 1
        rule: Event = {"t": "fwrule", "ts": ts, "src": "iptables", "nfam": nfam,
                       "table": table, "chain": chain, "pos": positions[chain],
                       "fam": "inet" if ipv == 4 else "inet6"}
        hook = _ipt_hook(chain)
        if hook is not None:
            rule["hook"] = hook
            rule["prio"] = (_IPT_NAT_POST if table == "nat" and hook in ("input", "postrouting")
                            else _IPT_PRIORITIES.get(table, 0))
        matches: dict[str, list[str]] = {}
        extra: list[str] = []
        verdict: str | None = None
        negate = ""
        i = 2
        while i < len(tokens):
            token = tokens[i]
            arg = tokens[i + 1] if i + 1 < len(tokens) else ""
            if token == "!":
                negate = "!"
                i += 1
                continue
            consumed = 2
            if token in ("-s", "--source", "-d", "--destination"):
                key = "saddr" if token in ("-s", "--source") else "daddr"
                for addr in arg.split(","):
                    net = ipaddress.ip_network(addr, strict=False) if addr else None
                    text = (str(net.network_address) if net is not None
                            and net.prefixlen == net.max_prefixlen else str(net))
                    matches.setdefault(key, []).append(negate + text)
            elif token in ("-p", "--protocol"):
                matches.setdefault("proto", []).append(negate + arg.lower())
            elif token in ("--sport", "--source-port", "--sports", "--source-ports"):
                matches.setdefault("sport", []).extend(negate + p for p in _ipt_ports(arg))
            elif token in ("--dport", "--destination-port", "--dports", "--destination-ports"):
                matches.setdefault("dport", []).extend(negate + p for p in _ipt_ports(arg))
            elif token in ("-i", "--in-interface"):
                matches.setdefault("iif", []).append(negate + arg)
            elif token in ("-o", "--out-interface"):
                matches.setdefault("oif", []).append(negate + arg)
            elif token in ("--state", "--ctstate"):
                matches.setdefault("ct", []).extend(negate + s.lower() for s in arg.split(","))
            elif token in ("-j", "--jump"):
                verdict = arg.lower() if arg.isupper() else f"jump {arg}"
                # The target's own options follow; they are not match fields.
                i = len(tokens)
                continue
            elif token in ("-g", "--goto"):
                verdict = f"goto {arg}"
            elif token in ("-m", "--match"):
                if arg not in ("tcp", "udp", "multiport", "state", "conntrack", "icmp",
                               "icmp6", "sctp", "udplite", "comment"):
                    extra.append(f"xt {arg}")
            elif token == "--comment":
                pass
            elif token.startswith("-"):
                # An option of another match: its name and, when present, its value.
                if not arg or arg.startswith("-") or arg == "!":
                    consumed = 1
                    extra.append(token)
                else:
                    extra.append(f"{token} {arg}")
            else:
                consumed = 1
                extra.append(token)
            negate = ""
            i += consumed
        for key in MATCH_KEYS:
            if key in matches:
                rule[key] = matches[key]
        if verdict is not None:
            rule["verdict"] = verdict
        rule["action"] = action_class(verdict or "")
        if extra:
            rule["extra"] = extra
        events.append(rule)
    return events


def _legacy_tool(ipv: int) -> str | None:
    """The iptables-save of the legacy (x_tables) backend, or None."""
    base = "iptables" if ipv == 4 else "ip6tables"
    legacy = on_path(f"{base}-legacy-save")
    if legacy:
        return legacy
    plain = on_path(f"{base}-save")
    if plain and "nft" not in os.path.basename(os.path.realpath(plain)):
        return plain
    return None


def _gather_iptables(root: Path, snap: Snapshot, ts: int) -> None:
    for ipv, names_file in ((4, "/proc/net/ip_tables_names"), (6, "/proc/net/ip6_tables_names")):
        names = read_text(root, names_file, snap)
        if not names or not names.strip():
            snap.skip(f"iptables (IPv{ipv})", "no legacy x_tables table is loaded")
            continue
        tool = _legacy_tool(ipv)
        if tool is None:
            snap.error(f"iptables (IPv{ipv})",
                       f"legacy tables ({names.split()}) but no legacy iptables-save tool")
            continue
        # Only a device with legacy tables runs a tool: subprocess stays out of the agent.
        import subprocess

        try:
            done = subprocess.run([tool], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            snap.error(tool, exc)
            continue
        if done.returncode != 0:
            snap.error(tool, f"exit {done.returncode}: "
                       f"{done.stderr.decode('utf-8', 'replace').strip()[:200]}")
            continue
        snap.events.extend(parse_iptables_save(done.stdout.decode("utf-8", "replace"), ipv, ts,
                                               snap, tool))


def gather(root: Path = Path("/"), reader: NftReader | None = None) -> Snapshot:
    """fwchain and fwrule events of the current network namespace: nftables (with `reader`
    when given), then the legacy iptables tables the kernel holds (files such as
    /proc/net/ip_tables_names under root)."""
    snap = Snapshot()
    ts = now_ms()
    tables = _gather_nft(snap, ts, reader)
    if tables == 0:
        snap.skip("nftables", "the ruleset is empty")
    _gather_iptables(root, snap, ts)
    return snap
