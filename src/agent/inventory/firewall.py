"""Firewall: the packet filter rules of the device, IPv4 and IPv6.

nftables is read over netlink (NETLINK_NETFILTER, agent.inventory.nfnetlink): tables,
chains (hook, priority, policy), rules and the elements of the sets rules look up. Each rule's
expressions are decoded register by register (meta, payload, bitwise, cmp, range, lookup, ct,
immediate verdicts, reject, nat) into the fields a reader wants: protocol, addresses, ports,
interfaces, action.

Legacy iptables (x_tables) cannot be read over netlink: iptables itself uses getsockopt on a
raw socket with a binary layout per table revision. When the kernel has legacy tables (listed
in /proc/net/ip_tables_names, ip6_tables_names) their rules are read from `iptables-save`
output of the legacy tool. iptables-nft rules live in nftables and are read there.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.inventory import Event, Snapshot, now_ms, read_text
from agent.inventory.nfnetlink import NftSocket

# nfgen family numbers (NFPROTO_*) -> nft's family names.
NFT_FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

_HOOKS_IP = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting",
             5: "ingress"}
HOOK_NAMES = {
    "ip": _HOOKS_IP,
    "ip6": _HOOKS_IP,
    "inet": _HOOKS_IP,
    "bridge": _HOOKS_IP,
    "arp": {0: "input", 1: "output"},
    "netdev": {0: "ingress", 1: "egress"},
}

IP_PROTOCOLS = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah",
                58: "icmpv6", 132: "sctp", 136: "udplite"}
_PROTOCOL_NUMBERS = {name: number for number, name in IP_PROTOCOLS.items()}
_PROTOCOL_NUMBERS["ipv6-icmp"] = 58

# ct state bits (NF_CT_STATE_*_BIT as nft shows them).
CT_STATES = {1: "invalid", 2: "established", 4: "related", 8: "new", 64: "untracked"}

# Verdict codes -> (what nft prints, the action class).
_VERDICTS = {
    "NF_ACCEPT": ("accept", "allow"),
    "NF_DROP": ("drop", "deny"),
    "NF_QUEUE": ("queue", "other"),
    "NF_STOLEN": ("stolen", "other"),
    "NFT_CONTINUE": ("continue", "other"),
    "NFT_BREAK": ("break", "other"),
    "NFT_RETURN": ("return", "other"),
    "NFT_JUMP": ("jump", "other"),
    "NFT_GOTO": ("goto", "other"),
}

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


@dataclass
class _Field:
    """What a register holds: a meta key, a payload slice, a ct key, or something undecoded."""

    kind: str  # "meta", "payload", "ct", "other"
    key: str = ""
    base: str = ""
    offset: int = 0
    length: int = 0
    mask: bytes | None = None


@dataclass
class _Rule:
    ipv: int | None
    matches: dict[str, list[str]] = field(default_factory=dict)
    verdict: str | None = None
    extra: list[str] = field(default_factory=list)
    pending_low: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def add(self, key: str, value: str) -> None:
        self.matches.setdefault(key, []).append(value)


def _data(attrs: Any, name: str) -> bytes | None:
    holder = attrs.get_attr(name)
    if holder is None:
        return None
    value = holder.get_attr("NFTA_DATA_VALUE")
    return bytes(value) if value is not None else None


def _prefix_len(mask: bytes) -> int | None:
    bits = "".join(f"{b:08b}" for b in mask)
    ones = len(bits) - len(bits.lstrip("1"))
    return ones if "1" not in bits[ones:] else None


def _address(value: bytes, ipv: int, mask: bytes | None) -> str:
    size = 4 if ipv == 4 else 16
    prefix = len(value) * 8
    if mask is not None:
        bits = _prefix_len(mask[: len(value)])
        if bits is not None:
            prefix = bits
    padded = value[:size].ljust(size, b"\x00")
    addr = ipaddress.ip_address(padded)
    return str(addr) if prefix >= size * 8 else f"{addr}/{prefix}"


def _field_name(f: _Field, rule: _Rule) -> str | None:
    """The match key a register's content stands for, or None when it is no such field."""
    if f.kind == "meta":
        return {
            "NFT_META_L4PROTO": "proto",
            "NFT_META_NFPROTO": "nfproto",
            "NFT_META_PROTOCOL": "ethertype",
            "NFT_META_IIFNAME": "iif",
            "NFT_META_OIFNAME": "oif",
            "NFT_META_IIF": "iifidx",
            "NFT_META_OIF": "oifidx",
        }.get(f.key)
    if f.kind == "ct" and f.key == "NFT_CT_STATE":
        return "ct"
    if f.kind == "payload" and f.base == "NFT_PAYLOAD_NETWORK_HEADER":
        if rule.ipv == 4:
            if f.offset == 9 and f.length == 1:
                return "proto"
            if f.offset == 12 and f.length <= 4:
                return "saddr"
            if f.offset == 16 and f.length <= 4:
                return "daddr"
        elif rule.ipv == 6:
            if f.offset == 6 and f.length == 1:
                return "proto"
            if f.offset == 8 and f.length <= 16:
                return "saddr"
            if f.offset == 24 and f.length <= 16:
                return "daddr"
    if f.kind == "payload" and f.base == "NFT_PAYLOAD_TRANSPORT_HEADER" and f.length == 2:
        if f.offset == 0:
            return "sport"
        if f.offset == 2:
            return "dport"
    if (f.kind == "payload" and f.base == "NFT_PAYLOAD_TRANSPORT_HEADER" and f.offset == 0
            and f.length == 4 and f.mask is None):
        # nft loads both ports at once for `udp sport A udp dport B`.
        return "ports"
    return None


def _value_text(key: str, value: bytes, f: _Field, rule: _Rule) -> str:
    if key == "proto":
        number = value[0] if value else 0
        return IP_PROTOCOLS.get(number, str(number))
    if key in ("saddr", "daddr"):
        return _address(value, rule.ipv or 4, f.mask)
    if key in ("sport", "dport"):
        return str(int.from_bytes(value[:2], "big"))
    if key in ("iif", "oif"):
        return value.split(b"\x00", 1)[0].decode("utf-8", "replace")
    if key in ("iifidx", "oifidx"):
        return str(int.from_bytes(value[:4], "little"))
    return value.hex()


def _ct_states(mask_or_value: bytes) -> list[str]:
    bits = int.from_bytes(mask_or_value[:4], "little")
    return [name for bit, name in CT_STATES.items() if bits & bit]


def _range_text(key: str, low: bytes, high: bytes, f: _Field, rule: _Rule) -> str:
    if key in ("saddr", "daddr"):
        size = 4 if (rule.ipv or 4) == 4 else 16
        lo = ipaddress.ip_address(low[:size].ljust(size, b"\x00"))
        hi = ipaddress.ip_address(high[:size].ljust(size, b"\x00"))
        nets = list(ipaddress.summarize_address_range(lo, hi))
        if len(nets) == 1:
            return str(nets[0])
        return f"{lo}-{hi}"
    return f"{_value_text(key, low, f, rule)}-{_value_text(key, high, f, rule)}"


class _NftReader:
    """One dump of the nftables ruleset and its set elements."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.socket = NftSocket()
        self.sets: dict[tuple[int, str, str], Any] = {}
        self.elements: dict[tuple[int, str, str], list[str] | None] = {}
        # A set read whose elements change without a new ruleset generation (filled from the
        # packet path, or expiring), or a rule that fills one: see nft_generation.
        self.volatile = False

    def close(self) -> None:
        self.socket.close()

    def dump(self, what: str) -> list[Any]:
        return self.socket.dump(what)

    def set_elements(
        self, family: int, table: str, name: str, f: _Field, rule: _Rule, key: str | None
    ) -> list[str] | None:
        """The elements of a set as text for the field they are matched against, or None when
        the set cannot be read or its key is no field decoded here."""
        ident = (family, table, name)
        if key is None:
            return None
        cache_key = (family, table, f"{name}\x00{key}\x00{rule.ipv}")
        if cache_key in self.elements:
            return self.elements[cache_key]
        result: list[str] | None
        try:
            replies = self.socket.set_elements(family, table, name)
        except OSError as exc:
            self.snap.error(f"nft set {table}/{name}", exc)
            self.elements[cache_key] = None
            return None
        interval = False
        set_msg = self.sets.get(ident)
        if set_msg is not None:
            flags = set_msg.get_attr("NFTA_SET_FLAGS") or ()
            interval = "NFT_SET_INTERVAL" in flags
            if "NFT_SET_TIMEOUT" in flags or "NFT_SET_EVAL" in flags:
                self.volatile = True
        else:
            self.volatile = True
        items: list[tuple[bytes, bool]] = []
        for reply in replies:
            for elem in reply.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS") or ():
                keyattr = elem.get_attr("NFTA_SET_ELEM_KEY")
                value = keyattr.get_attr("NFTA_DATA_VALUE") if keyattr is not None else None
                if value is None:
                    continue
                flags = elem.get_attr("NFTA_SET_ELEM_FLAGS") or ()
                end_attr = elem.get_attr("NFTA_SET_ELEM_KEY_END")
                if end_attr is not None:
                    end = end_attr.get_attr("NFTA_DATA_VALUE")
                    items.append((bytes(value), False))
                    items.append((bytes(end), True))
                    continue
                is_end = "NFT_SET_ELEM_INTERVAL_END" in flags
                items.append((bytes(value), is_end))
        texts: list[str] = []
        if interval:
            # Interval sets hold each range as its start and an end marker one past its last
            # value; the kernel also keeps a zero end marker before the first range.
            items.sort(key=lambda item: item[0])
            start: bytes | None = None
            for value, is_end in items:
                if not is_end:
                    start = value
                elif start is not None:
                    last = (int.from_bytes(value, "big") - 1) % (1 << (8 * len(value)))
                    high = last.to_bytes(len(value), "big")
                    if high == start:
                        texts.append(_value_text(key, start, f, rule))
                    else:
                        texts.append(_range_text(key, start, high, f, rule))
                    start = None
            if start is not None:
                high = b"\xff" * len(start)
                texts.append(_range_text(key, start, high, f, rule))
        else:
            texts = [_value_text(key, value, f, rule) for value, _ in sorted(items)]
        result = texts
        self.elements[cache_key] = result
        return result


def _decode_rule(
    reader: _NftReader, family: int, table: str, expressions: list[Any], ipv: int | None
) -> _Rule:
    rule = _Rule(ipv=ipv)
    regs: dict[str, _Field] = {}
    for expr in expressions:
        name = expr.get_attr("NFTA_EXPR_NAME")
        data = expr.get_attr("NFTA_EXPR_DATA")
        if name == "counter" or name == "log" or name == "limit" or name == "quota":
            continue
        if name == "dynset":
            reader.volatile = True
        if data is None:
            if name in ("masq", "notrack"):
                rule.verdict = "masquerade" if name == "masq" else name
            else:
                rule.extra.append(str(name))
            continue
        get = data.get_attr
        if name == "meta" and get("NFTA_META_DREG"):
            regs[get("NFTA_META_DREG")] = _Field("meta", key=str(get("NFTA_META_KEY")))
        elif name == "payload" and get("NFTA_PAYLOAD_DREG"):
            regs[get("NFTA_PAYLOAD_DREG")] = _Field(
                "payload",
                base=str(get("NFTA_PAYLOAD_BASE")),
                offset=int(get("NFTA_PAYLOAD_OFFSET") or 0),
                length=int(get("NFTA_PAYLOAD_LEN") or 0),
            )
        elif name == "ct" and get("NFTA_CT_DREG"):
            regs[get("NFTA_CT_DREG")] = _Field("ct", key=str(get("NFTA_CT_KEY")))
        elif name == "bitwise":
            source = regs.get(get("NFTA_BITWISE_SREG"))
            mask = _data(data, "NFTA_BITWISE_MASK")
            if source is not None and get("NFTA_BITWISE_OP") in (None, "NFT_BITWISE_BOOL"):
                regs[get("NFTA_BITWISE_DREG")] = _Field(
                    source.kind, source.key, source.base, source.offset, source.length, mask
                )
            else:
                regs[get("NFTA_BITWISE_DREG")] = _Field("other")
        elif name == "cmp":
            _decode_cmp(rule, regs.get(get("NFTA_CMP_SREG")), str(get("NFTA_CMP_OP")),
                        _data(data, "NFTA_CMP_DATA") or b"")
        elif name == "range":
            f = regs.get(get("NFTA_RANGE_SREG"))
            key = _field_name(f, rule) if f is not None else None
            low = _data(data, "NFTA_RANGE_FROM_DATA") or b""
            high = _data(data, "NFTA_RANGE_TO_DATA") or b""
            if f is None or key is None or key not in MATCH_KEYS:
                rule.extra.append("range")
            else:
                negate = "!" if get("NFTA_RANGE_OP") == "NFT_RANGE_NEQ" else ""
                rule.add(key, negate + _range_text(key, low, high, f, rule))
        elif name == "lookup":
            f = regs.get(get("NFTA_LOOKUP_SREG"))
            set_name = str(get("NFTA_LOOKUP_SET"))
            key = _field_name(f, rule) if f is not None else None
            if f is None or key is None or key not in MATCH_KEYS:
                rule.extra.append(f"lookup @{set_name}")
                continue
            negate = "!" if "NFT_LOOKUP_F_INV" in (get("NFTA_LOOKUP_FLAGS") or ()) else ""
            values = reader.set_elements(family, table, set_name, f, rule, key)
            if values is None:
                rule.add(key, f"{negate}@{set_name}")
            else:
                for value in values:
                    rule.add(key, negate + value)
        elif name == "immediate":
            verdict_data = get("NFTA_IMMEDIATE_DATA")
            verdict = verdict_data.get_attr("NFTA_DATA_VERDICT") if verdict_data else None
            if verdict is None:
                rule.extra.append("immediate")
                continue
            code = str(verdict.get_attr("NFTA_VERDICT_CODE"))
            text, _ = _VERDICTS.get(code, (code.lower(), "other"))
            target = verdict.get_attr("NFTA_VERDICT_CHAIN")
            rule.verdict = f"{text} {target}" if target else text
        elif name == "reject":
            rule.verdict = "reject"
        elif name == "nat":
            nat_type = str(get("NFTA_NAT_TYPE") or "")
            rule.verdict = "dnat" if "DNAT" in nat_type else "snat"
        elif name in ("masq", "redir", "queue", "dup", "fwd", "notrack"):
            rule.verdict = "masquerade" if name == "masq" else str(name)
        elif name == "target":
            # An xtables target kept by iptables-nft for what nft cannot express.
            rule.verdict = str(get("NFTA_TARGET_NAME") or "target").lower()
        elif name == "match":
            match_name = str(get("NFTA_MATCH_NAME"))
            if not (match_name == "multiport" and _xt_multiport(rule, get)):
                rule.extra.append(f"xt {match_name}")
        else:
            rule.extra.append(str(name))
    return rule


def _xt_multiport(rule: _Rule, get: Any) -> bool:
    """Ports of an xt multiport match (revision 1, as iptables-nft adds for --dports):
    struct xt_multiport_v1 {u8 flags; u8 count; u16 ports[15]; u8 pflags[15]; u8 invert},
    ports in host byte order. False when the layout is not that one."""
    info_text = get("NFTA_MATCH_INFO")
    if get("NFTA_MATCH_REV") != 1 or not isinstance(info_text, str):
        return False
    try:
        info = bytes.fromhex(info_text.replace(":", ""))
    except ValueError:
        return False
    if len(info) < 48 or info[1] > 15:
        return False
    flags, count = info[0], info[1]
    key = {0: "sport", 1: "dport"}.get(flags)
    if key is None:
        return False
    ports = [int.from_bytes(info[2 + 2 * i : 4 + 2 * i], "little") for i in range(15)]
    pflags = info[32:47]
    negate = "!" if info[47] else ""
    i = 0
    while i < count:
        if pflags[i] and i + 1 < count:
            rule.add(key, f"{negate}{ports[i]}-{ports[i + 1]}")
            i += 2
        else:
            rule.add(key, f"{negate}{ports[i]}")
            i += 1
    return True


def _decode_cmp(rule: _Rule, f: _Field | None, op: str, value: bytes) -> None:
    if f is None:
        rule.extra.append("cmp")
        return
    key = _field_name(f, rule)
    if key == "nfproto" or key == "ethertype":
        if op == "NFT_CMP_EQ":
            number = int.from_bytes(value, "little" if key == "nfproto" else "big")
            if key == "nfproto":
                rule.ipv = {2: 4, 10: 6}.get(number, rule.ipv)
            else:
                rule.ipv = {0x0800: 4, 0x86DD: 6}.get(number, rule.ipv)
        return
    if key == "ct":
        if f.mask is not None and op == "NFT_CMP_NEQ" and not value.strip(b"\x00"):
            states = _ct_states(f.mask)
        else:
            states = _ct_states(value)
            if op == "NFT_CMP_NEQ":
                states = ["!" + s for s in states]
        for state in states:
            rule.add("ct", state)
        return
    if key == "ports" and op == "NFT_CMP_EQ" and len(value) == 4:
        rule.add("sport", str(int.from_bytes(value[:2], "big")))
        rule.add("dport", str(int.from_bytes(value[2:], "big")))
        return
    if key is None or key == "ports":
        rule.extra.append(f"{f.kind} {f.key or f.base}".strip())
        return
    if key in ("iifidx", "oifidx"):
        rule.add(key[:3], "#" + _value_text(key, value, f, rule))
        return
    if op in ("NFT_CMP_GTE", "NFT_CMP_GT"):
        # The lower bound of a range; its upper bound follows in the next cmp.
        if op == "NFT_CMP_GT":
            value = (int.from_bytes(value, "big") + 1).to_bytes(len(value), "big")
        rule.pending_low[key] = (_value_text(key, value, f, rule), value)
        return
    if op in ("NFT_CMP_LTE", "NFT_CMP_LT"):
        if op == "NFT_CMP_LT":
            value = (int.from_bytes(value, "big") - 1).to_bytes(len(value), "big")
        low = rule.pending_low.pop(key, None)
        if low is not None:
            rule.add(key, _range_text(key, low[1], value, f, rule))
        else:
            rule.add(key, "<=" + _value_text(key, value, f, rule))
        return
    negate = "!" if op == "NFT_CMP_NEQ" else ""
    rule.add(key, negate + _value_text(key, value, f, rule))


def _chain_info(chain: Any, family_name: str) -> dict[str, object]:
    info: dict[str, object] = {}
    hook = chain.get_attr("NFTA_CHAIN_HOOK")
    if hook is not None:
        number = hook.get_attr("NFTA_HOOK_HOOKNUM")
        if number is not None:
            info["hook"] = HOOK_NAMES.get(family_name, {}).get(int(number), str(number))
        prio = hook.get_attr("NFTA_HOOK_PRIORITY")
        if prio is not None:
            prio = int(prio)
            # The kernel sends the priority as a big-endian s32, read unsigned.
            info["prio"] = prio - (1 << 32) if prio >= 1 << 31 else prio
        ctype = chain.get_attr("NFTA_CHAIN_TYPE")
        if ctype:
            info["ctype"] = ctype
        policy = chain.get_attr("NFTA_CHAIN_POLICY")
        if policy is not None:
            info["policy"] = "accept" if int(policy) == 1 else "drop"
    return info


def _gather_nft(snap: Snapshot, ts: int) -> int:
    """nftables events appended to snap; returns the number of tables (0: nft is not in use)."""
    try:
        reader = _NftReader(snap)
    except OSError as exc:
        snap.error("nftables", exc)
        return -1
    try:
        tables = reader.dump("tables")
        chains = reader.dump("chains")
        sets = reader.dump("sets")
        rules = reader.dump("rules")
    except OSError as exc:  # no nf_tables in the kernel, no privilege, a malformed answer
        snap.error("nftables", exc)
        reader.close()
        return -1
    try:
        for s in sets:
            reader.sets[(int(s["nfgen_family"]), s.get_attr("NFTA_SET_TABLE"),
                         s.get_attr("NFTA_SET_NAME"))] = s
        chain_info: dict[tuple[int, str, str], dict[str, object]] = {}
        for chain in chains:
            family = int(chain["nfgen_family"])
            family_name = NFT_FAMILIES.get(family, str(family))
            table = chain.get_attr("NFTA_CHAIN_TABLE")
            name = chain.get_attr("NFTA_CHAIN_NAME")
            info = _chain_info(chain, family_name)
            chain_info[(family, table, name)] = info
            event: Event = {"t": "fwchain", "ts": ts, "src": "nft", "nfam": family_name,
                            "table": table, "chain": name}
            event.update(info)
            if "policy" in info:
                event["action"] = action_class(str(info["policy"]))
            snap.events.append(event)
        position: dict[tuple[int, str, str], int] = {}
        for msg in rules:
            family = int(msg["nfgen_family"])
            family_name = NFT_FAMILIES.get(family, str(family))
            table = msg.get_attr("NFTA_RULE_TABLE")
            chain = msg.get_attr("NFTA_RULE_CHAIN")
            ident = (family, table, chain)
            position[ident] = position.get(ident, 0) + 1
            ipv = {"ip": 4, "ip6": 6}.get(family_name)
            try:
                rule = _decode_rule(reader, family, table,
                                    msg.get_attr("NFTA_RULE_EXPRESSIONS") or [], ipv)
            except (ValueError, TypeError, AttributeError, IndexError) as exc:
                snap.error(f"nft rule {family_name} {table} {chain}", f"undecodable: {exc}")
                continue
            event = {"t": "fwrule", "ts": ts, "src": "nft", "nfam": family_name,
                     "table": table, "chain": chain, "pos": position[ident]}
            handle = msg.get_attr("NFTA_RULE_HANDLE")
            if handle is not None:
                event["handle"] = int(handle)
            info = chain_info.get(ident, {})
            for key in ("hook", "prio"):
                if key in info:
                    event[key] = info[key]
            if rule.ipv is not None:
                event["fam"] = "inet" if rule.ipv == 4 else "inet6"
            for key in MATCH_KEYS:
                if key in rule.matches:
                    event[key] = rule.matches[key]
            for key, (low_text, _) in rule.pending_low.items():
                bucket = event.setdefault(key, [])
                assert isinstance(bucket, list)
                bucket.append(">=" + low_text)
            if rule.verdict is not None:
                event["verdict"] = rule.verdict
            event["action"] = action_class(rule.verdict or "")
            if rule.extra:
                event["extra"] = rule.extra
            snap.events.append(event)
        return len(tables)
    finally:
        snap.volatile = snap.volatile or reader.volatile
        reader.close()


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
    legacy = shutil.which(f"{base}-legacy-save")
    if legacy:
        return legacy
    plain = shutil.which(f"{base}-save")
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


def gather(root: Path = Path("/")) -> Snapshot:
    """fwchain and fwrule events of the current network namespace: nftables, then the legacy
    iptables tables the kernel holds (files such as /proc/net/ip_tables_names under root)."""
    snap = Snapshot()
    ts = now_ms()
    tables = _gather_nft(snap, ts)
    if tables == 0:
        snap.skip("nftables", "the ruleset is empty")
    _gather_iptables(root, snap, ts)
    return snap
