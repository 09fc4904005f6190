"""Least privilege, tested for real (issue 11, item 4): `micro-agent run` as the unit's user
with exactly the unit's capabilities, then with each of them removed.

Each run is what packaging/iot-micro-agent.service makes of the agent, built by hand:

- the user `iot-micro-agent` (created here as the package's postinst does when it is missing,
  removed afterwards only if this test created it);
- `setpriv` with the unit's user and group, no supplementary group, the capabilities as
  inheritable, ambient and bounding set (AmbientCapabilities=, CapabilityBoundingSet=) and
  no-new-privs (NoNewPrivileges=);
- a mount namespace (`unshare -m`, private propagation) where every mount is read-only
  (ProtectSystem=strict, ProtectKernelTunables=: /proc/sys too, the rest of /proc as it is),
  /tmp is an empty tmpfs (PrivateTmp=), /home and /root are empty (ProtectHome=), and only a
  state directory and a runtime directory made for the run are writable, passed as
  $STATE_DIRECTORY and $RUNTIME_DIRECTORY as systemd does; the configuration directory is
  bound in read-only (ConfigurationDirectory=). The test's own interpreter and the agent's
  sources are bound back read-only where ProtectHome= or PrivateTmp= would hide them (a
  package installs them under /usr); the interpreter writes no .pyc (a package ships them).

With every capability, every collector runs with its expected source; an exec by the test
with a unique tag in its argv arrives from audit (and, with Process_Mode Netlink, from the
proc connector, with its exe: another user's process), a TCP connection of the test from
sock_diag with its owner, the test's listening socket with its owner, LocalUsers with the
password state. Nothing is written outside the two directories: every other mount is
read-only, so a write elsewhere fails; a traced run (strace, the file system calls that
create, change or remove something, failed ones only) shows that none was even tried
(no EROFS), the agent's log has no refusal, and the private /tmp is empty at the end.

Then each capability is removed in turn: the collectors of `REMOVALS` degrade (another
source, a field left out, or unavailable) with a reason that names the capability, every
other collector's state is the same as with every capability, and the agent keeps running
and stops cleanly. `REMOVALS` is docs/operations.md's capability table: a test keeps the two
equal.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if __name__ != "__main__":  # the sandbox (this file run as a script) needs no fixture
    from test_live_audit import auditd, kernel_audit  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "packaging" / "iot-micro-agent.service"
OPERATIONS = REPO / "docs" / "operations.md"
USER = "iot-micro-agent"
AGENT = [sys.executable, "-m", "agent.cli"]
# What systemd gives a system service (its default PATH: the Firewall gatherer runs
# iptables-save from /usr/sbin).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The configurations the runs use: Login_UsePAM on, so that all three audit subscribers are
# there; Process on the proc connector for the capabilities the proc connector needs.
AUTO = {"Login_UsePAM": True}
NETLINK = {"Login_UsePAM": True, "Process_Mode": 2}
# The core's audit receive buffer: below it, net.core.rmem_max caps the buffer without
# CAP_NET_ADMIN (SO_RCVBUFFORCE).
AUDIT_RCVBUF = 4 << 20
# Refusals that a run with every capability must never log; EROFS: a write outside the
# state and runtime directories.
REFUSALS = ("Read-only file system", "Permission denied", "Operation not permitted")
# The file system calls that create, change or remove something (strace's names).
WRITING_CALLS = ("open", "openat", "openat2", "creat", "mkdir", "mkdirat", "mknod", "mknodat",
                 "rename", "renameat", "renameat2", "unlink", "unlinkat", "rmdir", "link",
                 "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmodat", "chown",
                 "lchown", "fchownat", "utimes", "utimensat", "setxattr", "lsetxattr")


# --- what the unit and the doc say ---------------------------------------------------------


def unit_capabilities() -> list[str]:
    """AmbientCapabilities= of the unit, which must be its CapabilityBoundingSet= too."""
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[name.strip()] = value.strip()
    ambient = settings["AmbientCapabilities"].split()
    assert sorted(ambient) == sorted(settings["CapabilityBoundingSet"].split())
    return ambient


def doc_capability_table() -> dict[str, set[str]]:
    """docs/operations.md's capability table: capability -> the collectors its second column
    names."""
    from agent.collectors import CLASSES

    names = re.compile(r"\b(" + "|".join(sorted(CLASSES, key=len, reverse=True)) + r")\b")
    table: dict[str, set[str]] = {}
    for line in OPERATIONS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`CAP_[A-Z_]+`", cells[0]):
            table[cells[0].strip("`")] = set(names.findall(cells[1]))
    return table


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


@dataclass(frozen=True)
class Degraded:
    """How a collector's state changes without the capability: its reason names what is
    lost (`reason`, a substring), its state and source become these (None: unchanged)."""

    reason: str
    state: str = "running"
    source: str | None = None
    # Only where the machine has what it degrades (a file, a small rmem_max).
    applies: Callable[[], bool] = field(default=lambda: True, compare=False)


@dataclass(frozen=True)
class Removal:
    """A capability removed: the configuration of the run (and of the run with every
    capability it is compared with), whether auditd owns audit, and the collectors that
    degrade. Every other collector must be unaffected."""

    config: dict[str, Any]
    degrades: dict[str, Degraded]
    beside_auditd: bool = False


SOCKET_OWNERS = "owners of other users' sockets unavailable"
REMOVALS: dict[str, Removal] = {
    # AUDIT_GET, which the audit source sends first: no audit source at all.
    "CAP_AUDIT_CONTROL": Removal(AUTO, {
        "Process": Degraded("AUDIT_GET failed: Operation not permitted (no CAP_AUDIT_CONTROL)",
                            source="cnproc"),
        "NetworkActivity": Degraded("(no CAP_AUDIT_CONTROL)", source="diag+packet"),
        "Login": Degraded("(no CAP_AUDIT_CONTROL)", source="utmp"),
    }),
    # The multicast group, the mode beside auditd (the owner needs no CAP_AUDIT_READ).
    "CAP_AUDIT_READ": Removal(AUTO, {
        "Process": Degraded("cannot join the audit multicast group (needs CAP_AUDIT_READ)",
                            source="cnproc"),
        "NetworkActivity": Degraded("(needs CAP_AUDIT_READ)", source="diag+packet"),
        "Login": Degraded("(needs CAP_AUDIT_READ)", source="utmp"),
    }, beside_auditd=True),
    # The proc connector's multicast group, nfnetlink, the audit buffer (SO_RCVBUFFORCE).
    "CAP_NET_ADMIN": Removal(NETLINK, {
        "Process": Degraded("proc connector listen: Operation not permitted (no CAP_NET_ADMIN)",
                            state="unavailable"),
        "Firewall": Degraded("Operation not permitted (no CAP_NET_ADMIN)"),
        "NetworkActivity": Degraded("capped at net.core.rmem_max",
                                    applies=lambda: rmem_max() < AUDIT_RCVBUF),
        "Login": Degraded("capped at net.core.rmem_max",
                          applies=lambda: rmem_max() < AUDIT_RCVBUF),
    }),
    # The DNS capture's packet socket.
    "CAP_NET_RAW": Removal(AUTO, {
        "NetworkActivity": Degraded("dns: unavailable: EPERM: dns packet socket: Operation not permitted "
                                    "(no CAP_NET_RAW)", source="diag+audit"),
    }),
    # /proc/PID/exe, cwd and the fd links of other users' processes.
    "CAP_SYS_PTRACE": Removal(NETLINK, {
        "Process": Degraded("exe and cwd of other users' processes unavailable: no CAP_SYS_PTRACE"),
        "NetworkActivity": Degraded(f"{SOCKET_OWNERS}: no CAP_SYS_PTRACE"),
        "ListeningPorts": Degraded(f"{SOCKET_OWNERS}: no CAP_SYS_PTRACE"),
    }),
    # /proc/PID/fd (0500), /etc/shadow, /var/log/btmp, product_serial, ip_tables_names.
    "CAP_DAC_READ_SEARCH": Removal(NETLINK, {
        "NetworkActivity": Degraded(f"{SOCKET_OWNERS}: no CAP_DAC_READ_SEARCH"),
        "ListeningPorts": Degraded(f"{SOCKET_OWNERS}: no CAP_DAC_READ_SEARCH"),
        "LocalUsers": Degraded("/etc/shadow: Permission denied (no CAP_DAC_READ_SEARCH)"),
        "Baseline": Degraded("/etc/shadow: Permission denied (no CAP_DAC_READ_SEARCH)"),
        "Login": Degraded("failed logins unavailable: /var/log/btmp: Permission denied "
                          "(no CAP_DAC_READ_SEARCH)",
                          applies=lambda: Path("/var/log/btmp").exists()),
        "SystemInformation": Degraded(
            "/sys/class/dmi/id/product_serial: Permission denied (no CAP_DAC_READ_SEARCH)",
            applies=lambda: Path("/sys/class/dmi/id/product_serial").exists()),
        "Firewall": Degraded(
            "/proc/net/ip_tables_names: Permission denied (no CAP_DAC_READ_SEARCH)",
            applies=lambda: Path("/proc/net/ip_tables_names").exists()),
    }),
}


def test_the_removals_are_the_units_capabilities_and_the_docs_table() -> None:
    assert sorted(REMOVALS) == sorted(unit_capabilities())
    documented = doc_capability_table()
    assert {cap: set(r.degrades) for cap, r in REMOVALS.items()} == documented


# --- the sandbox: runs as root in the new mount namespace ----------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 0x20, 0x400, 0x800, 0x1000, 0x4000
MS_RELATIME = 0x200000
# statvfs's flags a bind remount must repeat (it would clear them, or be refused).
KEPT_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
              os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME,
              os.ST_RELATIME: MS_RELATIME}


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    args = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _remount(target: str, read_only: bool) -> None:
    try:
        flags = os.statvfs(target).f_flag
    except OSError:
        return  # under another mount, or unreachable: nothing is reached through it
    kept = 0
    for st_flag, ms_flag in KEPT_FLAGS.items():
        if flags & st_flag:
            kept |= ms_flag
    _mount(None, target, None, MS_REMOUNT | MS_BIND | kept | (MS_RDONLY if read_only else 0))


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        # The fifth field, with spaces and the like written as octal escapes.
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                for line in f]


def sandbox(spec: dict[str, Any]) -> int:
    """The unit's file system view, then the command (strace, setpriv, the agent) as a child;
    SIGTERM is passed on. Prints {"exit": the child's status, "tmp_files": what the private
    /tmp holds at the end}."""
    binds = [(os.open(path, os.O_PATH | os.O_DIRECTORY), path, writable)
             for path, writable in [*((p, True) for p in spec["writable"]),
                                    *((p, False) for p in spec["readable"])]]
    _mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
    for point in _mount_points():
        if point != "/proc":
            _remount(point, read_only=True)
    for empty in spec["empty"]:
        _mount("tmpfs", empty, "tmpfs", MS_NOSUID | MS_NODEV,
               "mode=1777" if empty == "/tmp" else "mode=0755")
    for fd, path, writable in binds:
        os.makedirs(path, exist_ok=True)  # in one of the empty tmpfs, or there already
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
        _remount(path, read_only=not writable)
        os.close(fd)
    child = subprocess.Popen(spec["command"], env=spec["env"], stdout=sys.stderr.fileno())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    tmp_dev = os.stat("/tmp").st_dev
    written: list[str] = []
    for root, dirs, files in os.walk("/tmp"):
        # The bound directories are other file systems; what the tmpfs itself holds counts.
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(root, d)).st_dev == tmp_dev]
        written += [os.path.join(root, name) for name in files]
    print(json.dumps({"exit": code, "tmp_files": written}))
    return 0


# --- running the agent in it ----------------------------------------------------------------


def _hidden_by(path: Path, emptied: tuple[str, ...]) -> bool:
    return any(path == Path(e) or Path(e) in path.parents for e in emptied)


@dataclass
class Run:
    """One `micro-agent run` in the sandbox, from start to a clean stop."""

    name: str
    tag: str  # in the argv of the command the test runs
    data: Path
    runtime: Path
    log: Path
    status: dict[str, Any] = field(default_factory=dict)  # status.json while it ran
    events: list[dict[str, Any]] = field(default_factory=list)  # what it delivered
    report: dict[str, Any] = field(default_factory=dict)  # the sandbox's
    trace: list[str] = field(default_factory=list)  # strace's lines, when traced

    def collector(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.status["collectors"][name]
        return entry

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


PERIODIC_FIRST = ("SystemInformation", "LocalUsers", "Firewall", "SBoM", "Baseline",
                  "ListeningPorts")


def _started(doc: dict[str, Any]) -> bool:
    """Every collector started, the periodic ones with their first snapshot taken (their
    state's reason is set by it)."""
    collectors = doc.get("collectors", {})
    return bool(collectors) and all(
        collectors[name]["counters"].get("snapshots", 0) >= 1
        for name in PERIODIC_FIRST if collectors.get(name, {}).get("state") == "running")


def activity(tag: str, listener: socket.socket) -> None:
    """What the test does while a run is up: a command with a unique tag in its argv (alive
    long enough for the proc connector to read its /proc entries), and a TCP connection to
    the listener kept over a sock_diag snapshot (every 2 s)."""
    subprocess.run(["/bin/sh", "-c", "sleep 0.3", tag], check=True)
    client = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    time.sleep(2.5)
    client.close()
    peer.close()


@dataclass(frozen=True)
class Service:
    """The directories of one sandboxed run and the sandbox's description of it."""

    top: Path
    data: Path
    runtime: Path
    conf: Path
    trace: Path
    spec: dict[str, Any]

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        """The sandbox in a new mount namespace; its report comes on stdout, the command's
        output (the agent's log) goes to log."""
        with open(log, "wb") as out:
            return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                     sys.executable, __file__, json.dumps(self.spec)],
                                    stdout=subprocess.PIPE, stderr=out)


def service(base: Path, name: str, capabilities: list[str], argv: list[str],
            traced: bool = False) -> Service:
    """What the unit makes of a command (module docstring): its directories under base/name
    (the state and runtime directories the user's, a configuration directory it reads, a
    directory only root writes for strace's output), the command under setpriv with these
    capabilities, under strace when traced."""
    user = pwd.getpwnam(USER)
    top = base / name
    data, runtime, conf, trace = (top / "state", top / "run", top / "conf", top / "trace")
    for d in (data, runtime, conf, trace):
        d.mkdir(parents=True)
    for d, mode in ((data, 0o700), (runtime, 0o755)):  # StateDirectoryMode=, RuntimeDirectoryMode=
        os.chown(d, user.pw_uid, user.pw_gid)
        d.chmod(mode)
    conf.chmod(0o755)
    trace.chmod(0o700)  # root's: the agent cannot write there
    emptied = ("/tmp", "/home", "/root")
    if not _hidden_by(top, emptied):  # else the sandbox makes its parents anew, mode 0755
        for parent in top.parents:
            parent.chmod(parent.stat().st_mode | 0o011)
    # What the interpreter reads: where ProtectHome= or PrivateTmp= hides it, it is bound
    # back read-only; elsewhere the user must be able to reach it without a capability.
    import agent

    needed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, *sys.path) if p}
    needed = {p for p in needed if p.is_dir()} | {Path(agent.__file__).resolve().parents[1]}
    for path in needed:
        closed = [a for a in (path, *path.parents)
                  if not _hidden_by(a, emptied) and not a.stat().st_mode & 0o001]
        if closed:
            pytest.fail(f"{USER} cannot reach {path}: {closed[-1]} is mode "
                        f"{closed[-1].stat().st_mode & 0o777:o}; install the project where a "
                        "system user can read it (a package installs it under /usr)")
    readable = [str(conf)] + sorted(str(p) for p in needed if _hidden_by(p, emptied))
    caps = ",".join(["-all"] + ["+" + c.lower().removeprefix("cap_") for c in capabilities])
    command = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
               f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}",
               "--no-new-privs", "--", *argv]
    if traced:
        # Only the calls that failed (-Z), with the paths of their file descriptors (-y).
        command = ["strace", "-f", "-qq", "-y", "-Z", "--seccomp-bpf",
                   "-e", "trace=" + ",".join(WRITING_CALLS),
                   "-o", str(trace / "strace"), "--", *command]
    spec = {
        "writable": [str(data), str(runtime), str(trace)],
        "readable": readable,
        "empty": list(emptied),
        "env": {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "STATE_DIRECTORY": str(data),
                "RUNTIME_DIRECTORY": str(runtime), "PYTHONDONTWRITEBYTECODE": "1"},
        "command": command,
    }
    return Service(top, data, runtime, conf, trace, spec)


def refused_writes(trace: list[str]) -> list[str]:
    """strace's failed calls that were writes refused: EROFS anywhere (a read-only mount),
    EACCES or EPERM of a call that creates, changes or removes, or of an open for writing."""
    return [line for line in trace if " = -1 EROFS " in line or (
        re.search(r" = -1 (EACCES|EPERM) ", line)
        and (not line.split("(")[0].split()[-1].startswith("open")
             or re.search(r"O_WRONLY|O_RDWR|O_CREAT", line)))]


def run_agent(base: Path, name: str, capabilities: list[str], config: dict[str, Any],
              listener: socket.socket, traced: bool = False) -> Run:
    """Starts the agent in the sandbox with these capabilities, waits until every collector
    started, does the test's activity(), waits for the next status document, stops the agent
    with SIGTERM and reads back status.json, the delivered events, the log and the sandbox's
    report."""
    config_file = base / name / "conf" / "config.json"
    unit = service(base, name, capabilities, [*AGENT, "run", "--config", str(config_file)],
                   traced)
    config_file.write_text(json.dumps(config))
    config_file.chmod(0o644)
    run = Run(name, f"least-privilege-{name}-{uuid.uuid4()}", unit.data, unit.runtime,
              unit.top / "agent.log")
    sandbox_proc = unit.start(run.log)
    try:
        status_file = unit.runtime / "status.json"
        deadline = time.monotonic() + 60
        doc: dict[str, Any] = {}
        while not _started(doc):
            assert sandbox_proc.poll() is None, f"{name}: the agent exited: {run.log.read_text()}"
            assert time.monotonic() < deadline, f"{name}: not started in 60 s: {run.log.read_text()}"
            time.sleep(0.2)
            try:
                doc = json.loads(status_file.read_text())
            except (FileNotFoundError, ValueError):
                doc = {}
        activity(run.tag, listener)
        # The next document (rewritten every 2 s), with the activity's counters in it.
        seen = doc["updated"]
        while doc["updated"] <= seen + 1:
            assert sandbox_proc.poll() is None, f"{name}: the agent exited: {run.log.read_text()}"
            assert time.monotonic() < deadline + 30, f"{name}: status.json is not rewritten"
            time.sleep(0.2)
            doc = json.loads(status_file.read_text())
        run.status = doc
        # Still running, and stopped cleanly by SIGTERM, as systemd stops it.
        pid = int(doc["pid"])
        assert doc["running"] is True
        os.kill(pid, signal.SIGTERM)
        out, _ = sandbox_proc.communicate(timeout=60)
    finally:
        if sandbox_proc.poll() is None:  # a failed check: stop the agent as systemd would
            sandbox_proc.send_signal(signal.SIGTERM)  # passed on to the agent
            try:
                sandbox_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sandbox_proc.kill()
                sandbox_proc.wait()
    run.report = json.loads(out.decode().strip().splitlines()[-1])
    assert run.report["exit"] == 0, f"{name}: exit {run.report['exit']}: {run.log.read_text()}"
    decoded = subprocess.run([*AGENT, "decode", str(unit.data / "delivered")],
                             capture_output=True, check=True)
    run.events = [json.loads(line) for line in decoded.stdout.splitlines()]
    if traced:
        run.trace = (unit.trace / "strace").read_text(errors="replace").splitlines()
    return run


# --- fixtures: the user, a listening socket, audit left as found -----------------------------


@pytest.fixture(scope="module")
def service_user() -> Iterator[str]:
    """The unit's system user, made as the package's postinst does when it is missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a system user, setpriv, a mount namespace")
    for tool in ("setpriv", "unshare", "strace", "useradd"):
        if shutil.which(tool) is None:
            from conftest import skip_unless_ci

            skip_unless_ci(f"{tool} is not installed")
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", USER],
                       check=True)
        created = True
    yield USER
    if created:
        subprocess.run(["userdel", USER], check=True)
        if subprocess.run(["getent", "group", USER], capture_output=True,
                          check=False).returncode == 0:
            subprocess.run(["groupdel", USER], check=True)


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    """A TCP socket of the test (root's: another user's to the agent) listening all along:
    every run's first ListeningPorts snapshot finds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


@pytest.fixture(scope="module")
def baseline(service_user: str, listener: socket.socket,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The runs with every capability of the unit, with audit owned by the agent: Process on
    audit (traced: every write the agent tries), and Process on the proc connector."""
    from test_runtime import audit_state, audit_state_before_start

    base = tmp_path_factory.mktemp("least-privilege")
    caps = unit_capabilities()
    runs = {}
    for name, config in (("auto", AUTO), ("netlink", NETLINK)):
        before = audit_state_before_start()
        runs[name] = run_agent(base, name, caps, config, listener, traced=name == "auto")
        assert audit_state() == before, "the agent left audit changed"
    return runs


def tagged_execs(run: Run) -> list[dict[str, Any]]:
    return [e for e in run.events if e["t"] == "exec" and run.tag in (e.get("argv") or [])]


# --- with every capability ---------------------------------------------------------------------


EXPECTED_SOURCES = {"auto": {"Process": "audit", "NetworkActivity": "diag+audit+packet",
                             "Login": "utmp+audit", "ListeningPorts": "diag"},
                    "netlink": {"Process": "cnproc", "NetworkActivity": "diag+audit+packet",
                                "Login": "utmp+audit", "ListeningPorts": "diag"}}
NOT_BUILT: set[str] = set()


@pytest.mark.live
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_collector_runs_with_the_units_capabilities_and_writes_only_its_directories(
        baseline: dict[str, Run], listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for name, run in baseline.items():
        states = run.status["collectors"]
        for collector, entry in states.items():
            if collector in NOT_BUILT:
                assert entry["state"] == "unavailable"
                continue
            assert entry["state"] == "running", (name, collector, entry)
            expected = EXPECTED_SOURCES[name].get(collector)
            if expected is not None:
                assert entry.get("source") == expected, (name, collector, entry)
            assert "no CAP_" not in entry.get("reason", ""), (name, collector, entry)
        # The exec of the test (root's) with its exe: from audit, or from the proc connector
        # reading /proc/PID of another user's process.
        execs = tagged_execs(run)
        assert execs, f"{name}: no exec event of the tagged command"
        assert all(e.get("exe") and not e.get("denied") for e in execs), execs
        if name == "auto":
            assert all(e.get("sc") == "execve" and e.get("key") == USER for e in execs), execs
        else:
            assert all(e.get("src") == "cnproc" for e in execs), execs
        # sock_diag: the test's connection (both ends) and its listening socket, each with its
        # owner: this process.
        conns = [e for e in run.events if e["t"] == "conn" and e.get("src") == "diag"
                 and e["op"] == "open" and port in (e.get("lport"), e.get("rport"))]
        assert {e["dir"] for e in conns} == {"in", "out"}, conns
        assert all(e.get("pid") == os.getpid() for e in conns), conns
        listens = [e for e in run.events if e["t"] == "listen" and e.get("lport") == port]
        assert listens and all(e.get("pid") == os.getpid() for e in listens), listens
        # LocalUsers read /etc/shadow: the password state of root.
        root_user = [e for e in run.events if e["t"] == "user" and e["name"] == "root"]
        assert root_user and "pw" in root_user[0], root_user
        kinds = {e["t"] for e in run.events}
        assert {"sysinfo", "pkg", "baseline", "user", "heartbeat", "stats"} <= kinds
        # Nothing written outside the two directories: no refusal logged (a write elsewhere
        # fails with EROFS), nothing left in the private /tmp.
        lines = run.log_lines()
        assert not [line for line in lines if any(r in line for r in REFUSALS)], lines
        assert run.report["tmp_files"] == []
    # The traced run: no write was even tried outside (it would have failed: EROFS), and no
    # write of the agent was refused anywhere.
    traced = baseline["auto"].trace
    assert traced, "strace recorded nothing (the trace must hold at least the failed imports)"
    assert refused_writes(traced) == []


@pytest.mark.root
@pytest.mark.timeout(60)
def test_the_sandbox_makes_writes_elsewhere_fail_and_the_checks_see_them(
        service_user: str, tmp_path: Path) -> None:
    """The checks above can fail: in the same sandbox, as the same user with the same
    capabilities, a write to /var/tmp fails with EROFS and the trace shows it, a file written
    to /tmp is found in the private /tmp, and the state directory takes a file."""
    probe = ("import os, sys\n"
             "try:\n"
             "    open('/var/tmp/least-privilege-probe', 'w')\n"
             "except OSError as err:\n"
             "    print(err, file=sys.stderr)\n"
             "open('/tmp/left-behind', 'w').close()\n"
             "open(os.path.join(os.environ['STATE_DIRECTORY'], 'written'), 'w').close()\n")
    unit = service(tmp_path, "probe", unit_capabilities(), [sys.executable, "-c", probe],
                   traced=True)
    log = tmp_path / "probe.log"
    proc = unit.start(log)
    out, _ = proc.communicate(timeout=30)
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report == {"exit": 0, "tmp_files": ["/tmp/left-behind"]}, log.read_text()
    assert "Read-only file system" in log.read_text()
    refused = refused_writes((unit.trace / "strace").read_text().splitlines())
    assert len(refused) == 1 and "/var/tmp/least-privilege-probe" in refused[0], refused
    assert (unit.data / "written").is_file()
    assert not Path("/var/tmp/least-privilege-probe").exists()


# --- each capability removed ----------------------------------------------------------------


def _unaffected(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("state", "source", "reason")}


@pytest.mark.live
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("capability", sorted(REMOVALS))
def test_without_one_capability_only_its_collectors_degrade_and_say_why(
        capability: str, baseline: dict[str, Run], listener: socket.socket,
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from test_runtime import audit_state, audit_state_before_start

    removal = REMOVALS[capability]
    caps = [c for c in unit_capabilities() if c != capability]
    config_name = "auto" if removal.config is AUTO else "netlink"
    before = audit_state_before_start()
    if removal.beside_auditd:
        # auditd owns audit: the agent reads the multicast group; the comparison run has
        # every capability beside the same auditd.
        request.getfixturevalue("auditd")
        reference = run_agent(tmp_path, f"{config_name}-auditd", unit_capabilities(),
                              removal.config, listener)
        for name in removal.degrades:
            assert reference.collector(name)["reason"].count("multicast: owned by pid") == 1
    else:
        reference = baseline[config_name]
    run = run_agent(tmp_path, f"{config_name}-without-{capability}", caps, removal.config,
                    listener)
    if not removal.beside_auditd:
        assert audit_state() == before, "the agent left audit changed"

    degrades = {name: d for name, d in removal.degrades.items() if d.applies()}
    for name, entry in run.status["collectors"].items():
        was = reference.collector(name)
        if name not in degrades:
            assert _unaffected(entry) == _unaffected(was), (capability, name)
            continue
        expected = degrades[name]
        assert expected.reason in entry.get("reason", ""), (capability, name, entry)
        assert expected.reason not in was.get("reason", ""), (capability, name, was)
        assert entry["state"] == expected.state, (capability, name, entry)
        source = expected.source if expected.source is not None else was.get("source")
        if expected.state == "running":
            assert entry.get("source") == source, (capability, name, entry)

    # What the reasons say is what the events show.
    port = listener.getsockname()[1]
    listens = [e for e in run.events if e["t"] == "listen" and e.get("lport") == port]
    assert listens, "the listening socket of the test is missing"
    owners_lost = "ListeningPorts" in degrades
    assert all(("pid" in e) != owners_lost for e in listens), listens
    execs = tagged_execs(run)
    if degrades.get("Process", Degraded("")).state != "unavailable":
        assert execs, f"{capability}: no exec event of the tagged command"
    if capability == "CAP_SYS_PTRACE":
        assert execs and all(e.get("denied") and "exe" not in e for e in execs), execs
    elif "Process" not in degrades:
        assert execs and all(e.get("exe") and not e.get("denied") for e in execs), execs
    if capability.startswith("CAP_AUDIT"):
        assert execs and all(e.get("src") == "cnproc" for e in execs), execs
    root_user = [e for e in run.events if e["t"] == "user" and e["name"] == "root"]
    assert root_user and ("pw" in root_user[0]) == ("LocalUsers" not in degrades), root_user
    # The agent ran on: no traceback, no write refused (EROFS), and every refusal it logged
    # names the capability removed.
    lines = run.log_lines()
    assert not [line for line in lines if "Traceback" in line or "Read-only file system" in line]
    refused = [line for line in lines if any(r in line for r in REFUSALS[1:])]
    assert all(capability in line for line in refused), refused
    assert run.report["tmp_files"] == []


if __name__ == "__main__":
    sys.exit(sandbox(json.loads(sys.argv[1])))
