"""The built-in OS configuration checks of the Baseline gatherer, in the spirit of the CIS
Distribution Independent Linux benchmark. Each check reads files under the context's root and
answers (result, reason); docs/inventory.md lists them all.

A check answers Skip when what it checks is not on this device (no sshd, no login.defs, an
IPv6 sysctl on a kernel without IPv6) and Error when a file it needs cannot be read or parsed.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from collections.abc import Callable
from pathlib import Path

from agent.record import record

PASS, FAIL, SKIP, ERROR = "Pass", "Fail", "Skip", "Error"

Result = tuple[str, str]


class CheckError(Exception):
    """A check could not decide: the reason becomes its Error result."""


class NotApplicable(Exception):
    """What the check is about is not on this device: the reason becomes its Skip result."""


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class Context:
    """The files the checks read, each read and parsed once per run, under root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._text: dict[str, str | None] = {}
        self._sshd: dict[str, str] | None = None

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def text(self, path: str) -> str | None:
        """A file's text, None when it does not exist; CheckError when it cannot be read."""
        if path not in self._text:
            try:
                self._text[path] = self.path(path).read_bytes().decode("utf-8", "replace")
            except FileNotFoundError:
                self._text[path] = None
            except OSError as exc:
                raise CheckError(f"{path}: {exc.strerror or type(exc).__name__}") from exc
        return self._text[path]

    def required(self, path: str) -> str:
        text = self.text(path)
        if text is None:
            raise CheckError(f"{path} does not exist")
        return text

    def rows(self, path: str, nfields: int) -> list[list[str]]:
        """The colon-separated rows of passwd-like files; CheckError on a malformed line."""
        rows = []
        for number, line in enumerate(self.required(path).splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split(":")
            if len(fields) < nfields:
                raise CheckError(f"{path} line {number}: {len(fields)} fields, not {nfields}")
            rows.append(fields)
        return rows

    def sysctl(self, name: str) -> str:
        path = "/proc/sys/" + name.replace(".", "/")
        text = self.text(path)
        if text is None:
            raise NotApplicable(f"{name} does not exist in this kernel")
        return text.strip()

    def sshd(self) -> dict[str, str]:
        """sshd_config keywords (lowercase) -> the first value, as sshd takes it: the first
        occurrence wins, Include files are read in place, Match blocks are conditional and
        left out."""
        if self._sshd is None:
            if self.text("/etc/ssh/sshd_config") is None:
                raise NotApplicable("/etc/ssh/sshd_config does not exist (no sshd)")
            values: dict[str, str] = {}
            self._read_sshd("/etc/ssh/sshd_config", values, 0)
            self._sshd = values
        return self._sshd

    def _read_sshd(self, path: str, values: dict[str, str], depth: int) -> None:
        if depth > 8:
            raise CheckError(f"{path}: Include nested deeper than 8")
        text = self.text(path)
        if text is None:
            return
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace("=", " ", 1).split(None, 1)
            keyword = parts[0].lower()
            value = parts[1].strip() if len(parts) > 1 else ""
            if keyword == "match":
                # Everything after a Match line belongs to a conditional block, to the end.
                return
            if keyword == "include":
                for pattern in value.split():
                    if not pattern.startswith("/"):
                        pattern = "/etc/ssh/" + pattern
                    matches = sorted(glob.glob(str(self.path(pattern))))
                    for found in matches:
                        inner = "/" + os.path.relpath(found, self.root)
                        self._read_sshd(inner, values, depth + 1)
                continue
            values.setdefault(keyword, value)

    def key_values(self, path: str) -> dict[str, str]:
        """Whitespace-separated KEY VALUE files (login.defs)."""
        text = self.text(path)
        if text is None:
            raise NotApplicable(f"{path} does not exist")
        values: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.split()
            if parts and not parts[0].startswith("#") and len(parts) >= 2:
                values[parts[0]] = parts[1]
        return values


@record(frozen=True)
class Check:
    id: str
    group: str
    sev: str
    desc: str
    fix: str
    run: Callable[[Context], Result]


# --- SSH ---------------------------------------------------------------------------------


def _sshd_value(ctx: Context, keyword: str, default: str) -> tuple[str, bool]:
    values = ctx.sshd()
    if keyword.lower() in values:
        return values[keyword.lower()], True
    return default, False


def _sshd_is(keyword: str, default: str, good: set[str]) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        value, explicit = _sshd_value(ctx, keyword, default)
        shown = f"{keyword} {value}" + ("" if explicit else " (the default)")
        return (PASS if value.lower() in good else FAIL), shown

    return run


def _sshd_at_most(keyword: str, default: int, limit: int, allow_zero: bool = False
                  ) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        value, explicit = _sshd_value(ctx, keyword, str(default))
        text = value.lower()
        # LoginGraceTime accepts a time suffix: 1m, 30s.
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 1)
        number = text[:-1] if text[-1:] in ("s", "m", "h") else text
        if not number.isdigit():
            raise CheckError(f"{keyword} {value!r} is not a number")
        seconds = int(number) * scale
        shown = f"{keyword} {value}" + ("" if explicit else " (the default)")
        if seconds == 0 and not allow_zero:
            return FAIL, shown + ": unlimited"
        return (PASS if seconds <= limit else FAIL), shown

    return run


def _sshd_protocol(ctx: Context) -> Result:
    value, explicit = _sshd_value(ctx, "Protocol", "2")
    versions = {v.strip() for v in value.split(",")}
    shown = f"Protocol {value}" + ("" if explicit else " (the default)")
    return (PASS if versions == {"2"} else FAIL), shown


def _file_mode(path: str, max_mode: int, optional: bool = False,
               gids: tuple[int, ...] = (0,)) -> Callable[[Context], Result]:
    """Owned by root, group in gids (or a group named shadow), no permission beyond max_mode."""

    def run(ctx: Context) -> Result:
        try:
            st = os.stat(ctx.path(path))
        except FileNotFoundError as exc:
            if optional:
                raise NotApplicable(f"{path} does not exist") from exc
            raise CheckError(f"{path} does not exist") from exc
        except OSError as exc:
            raise CheckError(f"{path}: {exc.strerror}") from exc
        mode = stat.S_IMODE(st.st_mode)
        problems = []
        if mode & ~max_mode:
            problems.append(f"mode {mode:04o} allows more than {max_mode:04o}")
        if st.st_uid != 0:
            problems.append(f"owner uid {st.st_uid}, not root")
        allowed = set(gids) | _group_ids(ctx, "shadow")
        if st.st_gid not in allowed:
            problems.append(f"group gid {st.st_gid}")
        if problems:
            return FAIL, f"{path}: " + "; ".join(problems)
        return PASS, f"{path}: mode {mode:04o}, owner root"

    return run


def _group_ids(ctx: Context, name: str) -> set[int]:
    try:
        text = ctx.text("/etc/group") or ""
    except CheckError:
        return set()
    ids = set()
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            ids.add(int(fields[2]))
    return ids


# Directories whose files every user runs or the system reads as configuration; a
# world-writable file there lets any user change what root runs.
SYSTEM_DIRS = ("/etc", "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin",
               "/usr/local/sbin", "/lib/systemd/system", "/etc/init.d")
# /etc is walked recursively, bounded: a pathological tree cannot stall the agent.
WALK_LIMIT = 50000


def _world_writable(ctx: Context) -> Result:
    found: list[str] = []
    seen = 0
    for top in SYSTEM_DIRS:
        base = ctx.path(top)
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            for name in filenames:
                seen += 1
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IWOTH:
                    found.append("/" + os.path.relpath(full, ctx.root))
            if top != "/etc":
                dirnames[:] = []
            if seen > WALK_LIMIT:
                raise CheckError(f"more than {WALK_LIMIT} files under {SYSTEM_DIRS}")
    if found:
        return FAIL, "world-writable: " + _names(sorted(found))
    return PASS, f"no world-writable file among {seen} in {', '.join(SYSTEM_DIRS)}"


def _sticky_tmp(ctx: Context) -> Result:
    problems = []
    present = 0
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            st = os.stat(ctx.path(path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CheckError(f"{path}: {exc.strerror}") from exc
        present += 1
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            problems.append(path)
    if not present:
        raise NotApplicable("no /tmp, /var/tmp or /dev/shm")
    if problems:
        return FAIL, "world-writable without the sticky bit: " + ", ".join(problems)
    return PASS, "shared temporary directories have the sticky bit"


# --- sysctl ------------------------------------------------------------------------------


def _sysctl(name: str, good: set[str]) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        value = ctx.sysctl(name)
        return (PASS if value in good else FAIL), f"{name} = {value}"

    return run


def _core_limits(ctx: Context) -> Result:
    files = ["/etc/security/limits.conf"]
    limits_d = ctx.path("/etc/security/limits.d")
    if limits_d.is_dir():
        files += sorted("/etc/security/limits.d/" + name for name in os.listdir(limits_d)
                        if fnmatch.fnmatch(name, "*.conf"))
    any_file = False
    for path in files:
        text = ctx.text(path)
        if text is None:
            continue
        any_file = True
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if (len(parts) == 4 and parts[0] == "*" and parts[1] in ("hard", "-")
                    and parts[2] == "core" and parts[3] == "0"):
                return PASS, f"{path}: {' '.join(parts)}"
    if not any_file:
        raise NotApplicable("no /etc/security/limits.conf (pam_limits is not installed)")
    return FAIL, "no '* hard core 0' in limits.conf or limits.d"


# --- accounts ----------------------------------------------------------------------------


def _passwd(ctx: Context) -> list[list[str]]:
    return ctx.rows("/etc/passwd", 7)


def _empty_passwords(ctx: Context) -> Result:
    empty = [row[0] for row in _passwd(ctx) if row[1] == ""]
    shadow_text = ctx.text("/etc/shadow")
    if shadow_text is None:
        raise CheckError("/etc/shadow does not exist")
    empty += [row[0] for row in ctx.rows("/etc/shadow", 2) if row[1] == ""]
    if empty:
        return FAIL, "accounts without a password: " + _names(sorted(set(empty)))
    return PASS, "every account has a password or is locked"


def _uid0(ctx: Context) -> Result:
    others = [row[0] for row in _passwd(ctx) if row[2] == "0" and row[0] != "root"]
    if others:
        return FAIL, "uid 0 besides root: " + _names(others)
    return PASS, "only root has uid 0"


def _legacy_plus(ctx: Context) -> Result:
    found = []
    for path in ("/etc/passwd", "/etc/shadow", "/etc/group"):
        text = ctx.text(path)
        if text is None:
            continue
        if any(line.startswith("+") for line in text.splitlines()):
            found.append(path)
    if found:
        return FAIL, "legacy '+' entries in " + ", ".join(found)
    return PASS, "no legacy '+' entries"


def _groups_exist(ctx: Context) -> Result:
    gids = {row[2] for row in ctx.rows("/etc/group", 4)}
    missing = [f"{row[0]} (gid {row[3]})" for row in _passwd(ctx) if row[3] not in gids]
    if missing:
        return FAIL, "primary group missing from /etc/group: " + _names(missing)
    return PASS, "every primary group exists"


def _duplicates(path: str, nfields: int, column: int, what: str) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        seen: dict[str, list[str]] = {}
        for row in ctx.rows(path, nfields):
            seen.setdefault(row[column], []).append(row[0])
        dups = [f"{key} ({', '.join(names)})" for key, names in seen.items() if len(names) > 1]
        if dups:
            return FAIL, f"duplicate {what}: " + _names(dups)
        return PASS, f"no duplicate {what}"

    return run


def _root_gid(ctx: Context) -> Result:
    for row in _passwd(ctx):
        if row[0] == "root":
            return (PASS if row[3] == "0" else FAIL), f"root's primary gid is {row[3]}"
    raise CheckError("no root account in /etc/passwd")


def _shadowed(ctx: Context) -> Result:
    inline = [row[0] for row in _passwd(ctx) if row[1] not in ("x", "")]
    if inline:
        return FAIL, "password field not in /etc/shadow for: " + _names(inline)
    return PASS, "every password is kept in /etc/shadow"


# --- login.defs --------------------------------------------------------------------------


def _login_defs(name: str, compare: Callable[[int], bool], want: str
                ) -> Callable[[Context], Result]:
    def run(ctx: Context) -> Result:
        values = ctx.key_values("/etc/login.defs")
        if name not in values:
            return FAIL, f"{name} is not set (want {want})"
        raw = values[name]
        try:
            number = int(raw, 8) if name == "UMASK" else int(raw)
        except ValueError as exc:
            raise CheckError(f"{name} {raw!r} is not a number") from exc
        return (PASS if compare(number) else FAIL), f"{name} {raw} (want {want})"

    return run


def _umask_ok(value: int) -> bool:
    return value & 0o027 == 0o027


SSH, FILES, NET, KERNEL, CORE, ACCOUNTS, PASSWORD = (
    "SSH", "FilePermissions", "Network", "Kernel", "CoreDumps", "Accounts", "PasswordPolicy")
CRIT, IMP, WARN, INFO = "Critical", "Important", "Warning", "Informational"

CHECKS: tuple[Check, ...] = (
    Check("BL-SSH-001", SSH, IMP, "sshd_config is owned by root and not readable by others",
          "chown root:root /etc/ssh/sshd_config; chmod 600 /etc/ssh/sshd_config",
          _file_mode("/etc/ssh/sshd_config", 0o600, optional=True)),
    Check("BL-SSH-002", SSH, CRIT, "sshd refuses logins as root (PermitRootLogin no)",
          "Set 'PermitRootLogin no' in /etc/ssh/sshd_config",
          _sshd_is("PermitRootLogin", "prohibit-password", {"no"})),
    Check("BL-SSH-003", SSH, IMP, "sshd refuses password authentication (keys only)",
          "Set 'PasswordAuthentication no' in /etc/ssh/sshd_config",
          _sshd_is("PasswordAuthentication", "yes", {"no"})),
    Check("BL-SSH-004", SSH, CRIT, "sshd speaks SSH protocol 2 only",
          "Set 'Protocol 2' or remove the Protocol line from /etc/ssh/sshd_config",
          _sshd_protocol),
    Check("BL-SSH-005", SSH, CRIT, "sshd refuses accounts with empty passwords",
          "Set 'PermitEmptyPasswords no' in /etc/ssh/sshd_config",
          _sshd_is("PermitEmptyPasswords", "no", {"no"})),
    Check("BL-SSH-006", SSH, IMP, "sshd refuses host-based authentication",
          "Set 'HostbasedAuthentication no' in /etc/ssh/sshd_config",
          _sshd_is("HostbasedAuthentication", "no", {"no"})),
    Check("BL-SSH-007", SSH, IMP, "sshd ignores .rhosts and .shosts files",
          "Set 'IgnoreRhosts yes' in /etc/ssh/sshd_config",
          _sshd_is("IgnoreRhosts", "yes", {"yes"})),
    Check("BL-SSH-008", SSH, WARN, "sshd allows at most 4 authentication attempts",
          "Set 'MaxAuthTries 4' in /etc/ssh/sshd_config",
          _sshd_at_most("MaxAuthTries", 6, 4)),
    Check("BL-SSH-009", SSH, WARN, "sshd does not forward X11",
          "Set 'X11Forwarding no' in /etc/ssh/sshd_config",
          _sshd_is("X11Forwarding", "no", {"no"})),
    Check("BL-SSH-010", SSH, IMP, "sshd does not let users set environment options",
          "Set 'PermitUserEnvironment no' in /etc/ssh/sshd_config",
          _sshd_is("PermitUserEnvironment", "no", {"no"})),
    Check("BL-SSH-011", SSH, WARN, "sshd login grace time is one minute or less",
          "Set 'LoginGraceTime 60' in /etc/ssh/sshd_config",
          _sshd_at_most("LoginGraceTime", 120, 60)),
    Check("BL-FILE-001", FILES, CRIT, "/etc/passwd is owned by root, mode 644 or stricter",
          "chown root:root /etc/passwd; chmod 644 /etc/passwd",
          _file_mode("/etc/passwd", 0o644)),
    Check("BL-FILE-002", FILES, CRIT, "/etc/shadow is owned by root, mode 640 or stricter",
          "chown root:shadow /etc/shadow; chmod 640 /etc/shadow",
          _file_mode("/etc/shadow", 0o640)),
    Check("BL-FILE-003", FILES, IMP, "/etc/group is owned by root, mode 644 or stricter",
          "chown root:root /etc/group; chmod 644 /etc/group",
          _file_mode("/etc/group", 0o644)),
    Check("BL-FILE-004", FILES, IMP, "/etc/gshadow is owned by root, mode 640 or stricter",
          "chown root:shadow /etc/gshadow; chmod 640 /etc/gshadow",
          _file_mode("/etc/gshadow", 0o640, optional=True)),
    Check("BL-FILE-005", FILES, CRIT, "no world-writable files in system directories",
          "chmod o-w on each file listed", _world_writable),
    Check("BL-FILE-006", FILES, IMP, "world-writable temporary directories have the sticky bit",
          "chmod +t /tmp /var/tmp /dev/shm", _sticky_tmp),
    Check("BL-FILE-007", FILES, WARN, "/etc/crontab is owned by root, mode 600",
          "chown root:root /etc/crontab; chmod 600 /etc/crontab",
          _file_mode("/etc/crontab", 0o600, optional=True)),
    Check("BL-NET-001", NET, IMP, "IPv4 forwarding is off (the device is no router)",
          "sysctl -w net.ipv4.ip_forward=0 and set it in /etc/sysctl.conf",
          _sysctl("net.ipv4.ip_forward", {"0"})),
    Check("BL-NET-002", NET, IMP, "ICMP redirects are not accepted (IPv4, all interfaces)",
          "sysctl -w net.ipv4.conf.all.accept_redirects=0",
          _sysctl("net.ipv4.conf.all.accept_redirects", {"0"})),
    Check("BL-NET-003", NET, IMP, "ICMP redirects are not accepted (IPv4, new interfaces)",
          "sysctl -w net.ipv4.conf.default.accept_redirects=0",
          _sysctl("net.ipv4.conf.default.accept_redirects", {"0"})),
    Check("BL-NET-004", NET, IMP, "ICMP redirects are not accepted (IPv6)",
          "sysctl -w net.ipv6.conf.all.accept_redirects=0",
          _sysctl("net.ipv6.conf.all.accept_redirects", {"0"})),
    Check("BL-NET-005", NET, IMP, "ICMP redirects are not sent",
          "sysctl -w net.ipv4.conf.all.send_redirects=0",
          _sysctl("net.ipv4.conf.all.send_redirects", {"0"})),
    Check("BL-NET-006", NET, IMP, "source-routed packets are not accepted",
          "sysctl -w net.ipv4.conf.all.accept_source_route=0",
          _sysctl("net.ipv4.conf.all.accept_source_route", {"0"})),
    Check("BL-NET-007", NET, WARN, "broadcast ICMP echo requests are ignored",
          "sysctl -w net.ipv4.icmp_echo_ignore_broadcasts=1",
          _sysctl("net.ipv4.icmp_echo_ignore_broadcasts", {"1"})),
    Check("BL-NET-008", NET, IMP, "TCP SYN cookies are on",
          "sysctl -w net.ipv4.tcp_syncookies=1", _sysctl("net.ipv4.tcp_syncookies", {"1"})),
    Check("BL-NET-009", NET, WARN, "reverse path filtering is on",
          "sysctl -w net.ipv4.conf.all.rp_filter=1",
          _sysctl("net.ipv4.conf.all.rp_filter", {"1", "2"})),
    Check("BL-NET-010", NET, INFO, "packets with impossible addresses are logged",
          "sysctl -w net.ipv4.conf.all.log_martians=1",
          _sysctl("net.ipv4.conf.all.log_martians", {"1"})),
    Check("BL-NET-011", NET, WARN, "bogus ICMP error responses are ignored",
          "sysctl -w net.ipv4.icmp_ignore_bogus_error_responses=1",
          _sysctl("net.ipv4.icmp_ignore_bogus_error_responses", {"1"})),
    Check("BL-KRN-001", KERNEL, CRIT, "address space layout randomization is full",
          "sysctl -w kernel.randomize_va_space=2",
          _sysctl("kernel.randomize_va_space", {"2"})),
    Check("BL-KRN-002", KERNEL, WARN, "only privileged users read the kernel log",
          "sysctl -w kernel.dmesg_restrict=1", _sysctl("kernel.dmesg_restrict", {"1"})),
    Check("BL-KRN-003", KERNEL, IMP, "symlinks in sticky directories are protected",
          "sysctl -w fs.protected_symlinks=1", _sysctl("fs.protected_symlinks", {"1"})),
    Check("BL-KRN-004", KERNEL, IMP, "hard links to files of others are protected",
          "sysctl -w fs.protected_hardlinks=1", _sysctl("fs.protected_hardlinks", {"1"})),
    Check("BL-CORE-001", CORE, IMP, "setuid programs never dump core",
          "sysctl -w fs.suid_dumpable=0", _sysctl("fs.suid_dumpable", {"0"})),
    Check("BL-CORE-002", CORE, WARN, "core dumps are limited to size 0 for every user",
          "Add '* hard core 0' to /etc/security/limits.conf", _core_limits),
    Check("BL-ACC-001", ACCOUNTS, CRIT, "no account has an empty password",
          "passwd -l each account listed, or set a password", _empty_passwords),
    Check("BL-ACC-002", ACCOUNTS, CRIT, "root is the only account with uid 0",
          "Remove or renumber each other uid 0 account", _uid0),
    Check("BL-ACC-003", ACCOUNTS, IMP, "no legacy NIS '+' entries in passwd, shadow, group",
          "Remove the lines starting with '+'", _legacy_plus),
    Check("BL-ACC-004", ACCOUNTS, WARN, "every account's primary group exists",
          "Create the missing groups or fix the accounts' gid", _groups_exist),
    Check("BL-ACC-005", ACCOUNTS, IMP, "no two accounts share a uid",
          "Give each account its own uid",
          _duplicates("/etc/passwd", 7, 2, "uids")),
    Check("BL-ACC-006", ACCOUNTS, IMP, "no two accounts share a name",
          "Remove the duplicate entries from /etc/passwd",
          _duplicates("/etc/passwd", 7, 0, "user names")),
    Check("BL-ACC-007", ACCOUNTS, WARN, "no two groups share a gid",
          "Give each group its own gid", _duplicates("/etc/group", 4, 2, "gids")),
    Check("BL-ACC-008", ACCOUNTS, WARN, "no two groups share a name",
          "Remove the duplicate entries from /etc/group",
          _duplicates("/etc/group", 4, 0, "group names")),
    Check("BL-ACC-009", ACCOUNTS, IMP, "root's primary group is gid 0",
          "usermod -g 0 root", _root_gid),
    Check("BL-ACC-010", ACCOUNTS, CRIT, "password hashes are kept in /etc/shadow only",
          "Run pwconv", _shadowed),
    Check("BL-PWD-001", PASSWORD, WARN, "passwords expire within 365 days",
          "Set PASS_MAX_DAYS 365 in /etc/login.defs",
          _login_defs("PASS_MAX_DAYS", lambda v: 0 < v <= 365, "1..365")),
    Check("BL-PWD-002", PASSWORD, INFO, "passwords are kept at least a day",
          "Set PASS_MIN_DAYS 1 in /etc/login.defs",
          _login_defs("PASS_MIN_DAYS", lambda v: v >= 1, ">= 1")),
    Check("BL-PWD-003", PASSWORD, INFO, "users are warned 7 days before a password expires",
          "Set PASS_WARN_AGE 7 in /etc/login.defs",
          _login_defs("PASS_WARN_AGE", lambda v: v >= 7, ">= 7")),
    Check("BL-PWD-004", PASSWORD, WARN, "the default umask is 027 or stricter",
          "Set UMASK 027 in /etc/login.defs", _login_defs("UMASK", _umask_ok, "027")),
)
