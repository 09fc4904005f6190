"""LocalUsers: the accounts and groups of /etc/passwd and /etc/group, with each account's
password state from /etc/shadow when it is readable. The password hash itself never leaves
this module: only its state (set, empty, locked, disabled) does."""

from __future__ import annotations

from pathlib import Path

from agent.inventory import Event, Snapshot, now_ms, read_text

SRC = "users"

# Shells that refuse an interactive login.
NOLOGIN_SHELLS = frozenset(
    {
        "/usr/sbin/nologin",
        "/sbin/nologin",
        "/usr/bin/nologin",
        "/bin/nologin",
        "/bin/false",
        "/usr/bin/false",
        "/bin/sync",
        "/sbin/shutdown",
        "/sbin/halt",
    }
)


def password_state(field: str) -> str:
    """The state of a password field of /etc/shadow (or of /etc/passwd): never its value.

    "empty": no password at all (anyone may log in where PAM allows it); "locked": a hash
    behind "!" (usermod -L); "disabled": "*" or "!" alone, or anything that is no hash, so no
    password can match; "set": a crypt(3) hash."""
    if field == "":
        return "empty"
    if field.startswith("!"):
        rest = field.lstrip("!")
        return "locked" if rest and rest[0] not in "*!" else "disabled"
    if field.startswith("*") or field in ("x", "NP", "LK"):
        return "disabled"
    return "set"


def _parse_passwd(text: str, snap: Snapshot) -> list[list[str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 7:
            snap.error("/etc/passwd", f"line {number}: {len(fields)} fields, not 7")
            continue
        if fields[0].startswith(("+", "-")):
            # NIS compat entries are no local accounts; the baseline flags them.
            continue
        if not fields[2].isdigit() or not fields[3].isdigit():
            snap.error("/etc/passwd", f"line {number}: uid or gid is not a number")
            continue
        rows.append(fields)
    return rows


def _parse_group(text: str, snap: Snapshot) -> list[list[str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 4:
            snap.error("/etc/group", f"line {number}: {len(fields)} fields, not 4")
            continue
        if fields[0].startswith(("+", "-")):
            continue
        if not fields[2].isdigit():
            snap.error("/etc/group", f"line {number}: gid is not a number")
            continue
        rows.append(fields)
    return rows


def _shadow(root: Path, snap: Snapshot) -> dict[str, list[str]] | None:
    """name -> shadow fields (the hash replaced by its state), or None when unreadable."""
    text = read_text(root, "/etc/shadow", snap)
    if text is None:
        return None
    entries: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2:
            snap.error("/etc/shadow", f"line {number}: fewer than 2 fields")
            continue
        fields[1] = password_state(fields[1])
        entries[fields[0]] = fields
    return entries


def _int_field(fields: list[str], index: int) -> int | None:
    if index < len(fields) and fields[index].strip().lstrip("-").isdigit():
        return int(fields[index])
    return None


def gather(root: Path = Path("/")) -> Snapshot:
    """A `user` event per account of /etc/passwd and a `group` event per group of /etc/group."""
    snap = Snapshot()
    ts = now_ms()
    passwd_text = read_text(root, "/etc/passwd", snap, missing_ok=False)
    group_text = read_text(root, "/etc/group", snap, missing_ok=False)
    passwd = _parse_passwd(passwd_text, snap) if passwd_text is not None else []
    groups = _parse_group(group_text, snap) if group_text is not None else []
    shadow = _shadow(root, snap)
    if shadow is None:
        snap.skip("password state", "/etc/shadow is not readable")
    shells_text = read_text(root, "/etc/shells", snap)
    shells = (
        {line.strip() for line in shells_text.splitlines() if line.startswith("/")}
        if shells_text is not None
        else None
    )

    group_name = {int(g[2]): g[0] for g in groups}
    member_of: dict[str, list[str]] = {}
    for g in groups:
        for member in filter(None, (m.strip() for m in g[3].split(","))):
            member_of.setdefault(member, []).append(g[0])

    today = ts // 86_400_000
    for name, pw, uid, gid, gecos, home, shell in passwd:
        event: Event = {
            "t": "user",
            "ts": ts,
            "src": SRC,
            "name": name,
            "uid": int(uid),
            "gid": int(gid),
            "home": home,
            "shell": shell,
        }
        if gecos:
            event["gecos"] = gecos
        primary = group_name.get(int(gid))
        names = ([primary] if primary else []) + [
            g for g in member_of.get(name, []) if g != primary
        ]
        event["groups"] = names
        can_login = bool(shell) and shell not in NOLOGIN_SHELLS
        if shells is not None and shell and shell not in shells:
            can_login = False
        state: str | None = None
        if pw != "x":
            # An old-style hash in /etc/passwd itself.
            state = password_state(pw)
        elif shadow is not None:
            entry = shadow.get(name)
            if entry is None:
                snap.error("/etc/shadow", f"no entry for {name!r}")
            else:
                state = entry[1]
                expire = _int_field(entry, 7)
                if expire is not None and 0 <= expire <= today:
                    event["expired"] = True
                    can_login = False
                changed = _int_field(entry, 2)
                if changed is not None and changed > 0:
                    event["pwchanged"] = changed * 86_400_000
        if state is not None:
            event["pw"] = state
        event["login"] = can_login
        snap.events.append(event)

    for name, _pw, gid, members in groups:
        snap.events.append(
            {
                "t": "group",
                "ts": ts,
                "src": SRC,
                "name": name,
                "gid": int(gid),
                "members": [m for m in (m.strip() for m in members.split(",")) if m],
            }
        )
    return snap
