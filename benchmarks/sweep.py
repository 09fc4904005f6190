"""scripts/bench sweep: the whole agent against auditd (RAW, ENRICHED) and auditd + laurel,
CPU of every process involved against the load's rate, plotted (issue 15; docs/performance.md).

    python3 benchmarks/sweep.py [--seconds 30] [--rates 100,200,400,800,1600]
                                [--configs raw,enriched,laurel,agent] [--loads exec,conn]
                                [--repeat 1] [--out-dir .benchmarks/sweep] [--lock FILE]
                                [--no-plot]

Root, auditctl, auditd and laurel (Debian's packages), and the kernel's audit to itself: it
refuses to start while a live process owns the audit, and puts back what it changed after each
configuration (enabled, failure, rate_limit, backlog_limit, backlog_wait_time, the rule list),
checking that `auditctl -s` (counters aside) and `auditctl -l` read as before. With --lock the
file is held (flock) for each configuration and released between them, so that other users of
the kernel's audit wait minutes, not the whole sweep.

Configurations, each started once per round and swept over every load and rate in it:

- raw: auditd with Debian's auditd.conf but `log_format = RAW`, no plugin;
- raw-lean: raw, and the kernel asked not to send the record types the agent excludes as
  owner on the local default (EOE, BPRM_FCAPS, PATH and PROCTITLE: native/audit_netlink.c,
  install_exclusions), so that the cost of those records is seen apart from the daemon's;
- enriched: auditd with Debian's auditd.conf as it is (ENRICHED), no plugin;
- laurel: auditd as enriched with Debian's laurel plugin (its plugins.d file and its
  config.toml, both pointed at this run's directory);
- agent: `micro-agent run` on the local default (an empty config: every collector on), the
  audit owner (Process_Mode Auto finds no audit daemon).

The peers' kernel settings are those of Debian's audit.rules (backlog_limit 8192,
backlog_wait_time 60000); their rules are the agent's own (native/audit_netlink.c,
install_arch_rules: execve and execveat; connect, accept, accept4 and bind; on i386 socketcall
per call number), added with auditctl under another key. The log files never rotate during a
run (rotation would drop what is counted): max_log_file_action IGNORE for auditd, a size
beyond the run for laurel; otherwise their configurations are Debian's.

Loads (tests/hostile_spawner.c, built here): `exec` runs a static `true` (vfork + execve) with
one unique argument each; `conn` makes TCP connections to its own listener on 127.0.0.1
(connect, accept, close with a reset). Each at every rate for --seconds, on absolute deadlines;
the rate the spawner really reached is reported.

Per configuration, load and rate:

- CPU: the run time of every process involved, summed over the process tree and over the
  window from the load's start to one second after its end: the agent and its children;
  auditd and its plugins (laurel); kauditd, the kernel thread that sends the records, in both.
  Each live thread's time is read in nanoseconds from /proc/PID/task/TID/schedstat (the
  scheduler's sum_exec_runtime, which /proc/PID/stat reports cut to 10 ms ticks: at 100/s one
  tick was a tenth of a point's figure); children reaped in the window add their cutime and
  cstime (ticks). A process one of whose threads ended inside the window is counted from
  /proc/PID/stat's ticks instead (the ended thread's time is only there), and said so. CPU % of
  one core = cpu seconds / wall seconds * 100. The load's own CPU (the spawner and its
  children, where the audit hooks of each syscall run) is reported apart.
- Delivered: the load's events found where each configuration puts them: the agent's
  delivered batches (`micro-agent decode`: exec events whose argv holds the tag, net connect
  events to the listener's port, by their hits); auditd's audit.log (EXECVE records with the
  tag; SOCKADDR records of the port); laurel's log (lines with the tag; SOCKADDR of the port).
  lost = started - delivered, so a configuration that keeps up only by dropping shows it.

Rounds (--repeat N): every configuration is swept N times, the rounds' orders alternating
(raw, agent, agent, raw, ...: what runs early in one round runs late in the next), so that a
drift of the machine over the run weighs on each alike. One 30 s window per point moves by a
tenth from run to run on a shared machine; with rounds the table gives each point's median
CPU % over them, and for the agent against auditd RAW the median of the rounds' ratios (each
round's agent over the same round's auditd, measured minutes apart) with their lowest and
highest, so that a miss can be told from the run's spread.

CPU seconds per 1,000 events are robust to other work on the machine (they count this work
only); CPU % also depends on how long the window was, which is the load's own pace.

Results: performance-sweep.json (every figure), performance-exec.png and
performance-conn.png in --out-dir, and the table on stdout (docs/performance.md holds one run's).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from flash_writes import descendants  # benchmarks/: the script's own directory

REPO = Path(__file__).resolve().parents[1]
SPAWNER_SOURCE = REPO / "tests" / "hostile_spawner.c"
AGENT = [sys.executable, "-m", "agent.cli"]
CONFIGS = ("raw", "raw-lean", "enriched", "laurel", "agent")
LOADS = ("exec", "conn")
RATES = (100, 200, 400, 800, 1600)
PEER_KEY = "am-sweep-peer"  # the peers' rules; never the agent's key, which its start removes
TAIL_S = 1.0  # after the load: the records still in flight are processed inside the window
TICKS = os.sysconf("SC_CLK_TCK")
# Debian's audit.rules (auditd package): the kernel settings a peer runs with.
PEER_BACKLOG_LIMIT = 8192
PEER_BACKLOG_WAIT = 60000
# auditctl -s fields that are counters, not state.
COUNTERS = ("lost", "backlog", "backlog_wait_time_actual")
# raw-lean's exclusions: the agent's on the local default (its range rules, which its restore
# would take for its own), written as the types an administrator would name.
LEAN_EXCLUSIONS = tuple(["-a", "always,exclude", "-F", f"msgtype={name}"]
                        for name in ("EOE", "BPRM_FCAPS", "PATH", "PROCTITLE"))
LABELS = {"raw": "auditd RAW", "raw-lean": "auditd RAW, lean", "enriched": "auditd ENRICHED", "laurel": "auditd + laurel",
          "agent": "micro-agent"}


# ---- the kernel's audit state -----------------------------------------------------------------


def audit_status() -> dict[str, int]:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    status = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            status[parts[0]] = int(parts[1])
    return status


def audit_rules() -> str:
    return subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout


def auditctl(*args: str) -> None:
    subprocess.run(["auditctl", *args], capture_output=True, text=True, check=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class AuditState:
    settings: dict[str, int]  # auditctl -s without its counters
    rules: str

    @staticmethod
    def read() -> AuditState:
        status = audit_status()
        return AuditState({k: v for k, v in status.items() if k not in COUNTERS}, audit_rules())

    def rules_argv(self) -> list[list[str]]:
        return [line.split() for line in self.rules.splitlines() if line.startswith("-a ")]

    def restore(self) -> None:
        """Our rules gone, the settings put back, then read again: equal or SystemExit."""
        with contextlib.suppress(subprocess.CalledProcessError):
            auditctl("-D", "-k", PEER_KEY)  # fails when there is none
        for rule in LEAN_EXCLUSIONS:
            if rule not in self.rules_argv():
                with contextlib.suppress(subprocess.CalledProcessError):
                    auditctl("-d", *rule[1:])  # fails when there is none
        now = AuditState.read()
        flags = {"failure": "-f", "rate_limit": "-r", "backlog_limit": "-b",
                 "backlog_wait_time": "--backlog_wait_time"}
        for name, flag in flags.items():
            if name in self.settings and now.settings.get(name) != self.settings[name]:
                auditctl(flag, str(self.settings[name]))
        if now.settings.get("pid", 0) != 0 and not pid_alive(now.settings["pid"]):
            # A dead owner: AUDIT_SET pid 0 is what the kernel's own probe would do.
            release_audit_pid()
        if now.settings.get("enabled") != self.settings.get("enabled"):
            auditctl("-e", str(self.settings["enabled"]))
        after = AuditState.read()
        if after != self:
            raise SystemExit(f"sweep: the audit state was not restored:\n  now {after}\n  "
                             f"before {self}")


def release_audit_pid() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from kernel_audit import release_audit_pid as release

    release()


def kauditd_pid() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "kauditd":
                    return int(entry.name)
    raise SystemExit("sweep: no kauditd thread: this kernel has no audit")


# ---- CPU from /proc ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessCpu:
    """One process's CPU at one moment: `precise_s` sums its live threads' schedstat run
    times (ns) and its reaped children's c-times; `ticks_s` is /proc/PID/stat's utime + stime
    + cutime + cstime, which also holds the threads that have ended; `tids` are its live
    threads."""

    precise_s: float
    ticks_s: float
    tids: frozenset[int]


def process_cpu(pid: int) -> ProcessCpu | None:
    """None: the process ended between the listing and the read (its parent's c-times have
    it). Summed over a tree at two moments, a child reaped in between moves from its own
    entry into its parent's c-times: the sum stays right."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        run_ns, tids = 0, set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended while listed
                run_ns += int((task / "schedstat").read_text().split()[0])
                tids.add(int(task.name))
    except OSError:
        return None
    own_ticks, reaped_ticks = (sum(int(f) for f in fields[i:i + 2]) for i in (11, 13))
    return ProcessCpu(run_ns / 1e9 + reaped_ticks / TICKS, (own_ticks + reaped_ticks) / TICKS,
                      frozenset(tids))


@dataclass
class CpuSample:
    """Per role (a tree's root role, a child's comm, or a single thread): the processes
    measured, by pid."""

    roles: dict[str, dict[int, ProcessCpu]]

    def total_s(self) -> float:
        return sum(cpu.precise_s for procs in self.roles.values() for cpu in procs.values())

    def since(self, before: CpuSample) -> tuple[dict[str, float], list[str]]:
        """CPU seconds per role in between, and the roles counted from ticks because a
        thread of theirs ended in between."""
        out, from_ticks = {}, []
        for role in sorted(set(before.roles) | set(self.roles)):
            then, now = before.roles.get(role, {}), self.roles.get(role, {})
            ended = any(not cpu.tids <= now[pid].tids for pid, cpu in then.items() if pid in now)
            kind = "ticks_s" if ended else "precise_s"
            if ended:
                from_ticks.append(role)
            out[role] = (sum(getattr(cpu, kind) for cpu in now.values())
                         - sum(getattr(cpu, kind) for cpu in then.values()))
        return out, from_ticks


@dataclass
class Roles:
    """Who is measured: role name -> the root pid of a tree (kauditd: the thread alone)."""

    trees: dict[str, int]
    single: dict[str, int] = field(default_factory=dict)

    def sample(self) -> CpuSample:
        out: dict[str, dict[int, ProcessCpu]] = {}

        def put(role: str, pid: int) -> None:
            cpu = process_cpu(pid)
            if cpu is not None:
                out.setdefault(role, {})[pid] = cpu

        for role, root in self.trees.items():
            pids = descendants(root)
            put(role, root)
            for pid in pids[1:]:
                put(_comm(pid), pid)
        for role, pid in self.single.items():
            put(role, pid)
        return CpuSample(out)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- the load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawner:
    path: Path
    true: Path

    @staticmethod
    def build(where: Path) -> Spawner:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("sweep: no C compiler for tests/hostile_spawner.c")
        flags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"]
        path, true = where / "hostile_spawner", where / "true"
        subprocess.run([cc, *flags, "-o", str(path), str(SPAWNER_SOURCE)], check=True)
        subprocess.run([cc, *flags, "-static", "-DHOSTILE_TRUE", "-o", str(true),
                        str(SPAWNER_SOURCE)], check=True)
        return Spawner(path, true)

    def run(self, load: str, rate: int, seconds: float, tag: str, work: Path) -> dict[str, float]:
        count = max(1, round(rate * seconds))
        if load == "exec":
            listing = work / f"{tag}.list"
            exe = bytes(self.true)
            listing.write_bytes(b"".join(exe + b"\0" + f"{tag}-{i}".encode() + b"\0"
                                         for i in range(count)))
            args = [str(self.path), "exec", str(rate), str(listing)]
        else:
            args = [str(self.path), "connect", str(rate), str(count)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds * 10 + 60,
                             check=False)
        if out.returncode != 0:
            raise SystemExit(f"sweep: spawner {args[1:]} failed: {out.stdout} {out.stderr}")
        report: dict[str, float] = json.loads(out.stdout)
        return report


# ---- one measured phase -----------------------------------------------------------------------


@dataclass
class Point:
    config: str
    load: str
    target_rate: int
    tag: str
    round: int = 0  # --repeat: which of the rounds
    started: int = 0
    achieved_rate: float = 0.0
    port: int = 0  # conn: the listener's port, what the events are counted by
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # per role
    cpu_from_ticks: list[str] = field(default_factory=list)  # roles a thread of which ended
    load_cpu_s: float = 0.0  # the spawner and its children
    kernel_lost: int = 0  # growth of the kernel's lost counter over the phase
    delivered: int = 0

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s.values())

    @property
    def cpu_pct(self) -> float:
        return 100 * self.total_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.started - self.delivered)

    def as_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc.update(cpu_pct=round(self.cpu_pct, 3), total_cpu_s=round(self.total_cpu_s, 3),
                   lost=self.lost,
                   cpu_ms_per_1000=round(1e6 * self.total_cpu_s / self.started, 2)
                   if self.started else None)
        return doc


def measure(point: Point, roles: Roles, spawner: Spawner, seconds: float, work: Path) -> None:
    lost0 = audit_status().get("lost", 0)
    before = roles.sample()
    t0 = time.monotonic()
    load0 = children_cpu_s()  # reaped children only: the spawner alone is reaped in between
    report = spawner.run(point.load, point.target_rate, seconds, point.tag, work)
    point.load_cpu_s = round(children_cpu_s() - load0, 3)
    time.sleep(TAIL_S)
    after = roles.sample()
    point.wall_s = round(time.monotonic() - t0, 3)
    cpu_s, point.cpu_from_ticks = after.since(before)
    point.cpu_s = {role: round(seconds, 4) for role, seconds in cpu_s.items()}
    point.started = int(report["started"])
    point.achieved_rate = float(report["rate"])
    point.port = int(report.get("port", 0))
    point.kernel_lost = audit_status().get("lost", 0) - lost0


# ---- counting what each delivered -------------------------------------------------------------


def sockaddr_hex(port: int) -> bytes:
    """A SOCKADDR record's saddr for 127.0.0.1:port (family 2, little-endian, then the port
    and the address in network order), as auditd writes it."""
    return b"0200%04X7F000001" % port


def count_in_log(points: list[Point], data: bytes, laurel: bool) -> None:
    """auditd's log or laurel's: exec by the tag's unique arguments, conn by the SOCKADDR of
    the listener's port (only the connects have it: the listener binds port 0)."""
    for p in points:
        if p.load == "exec":
            p.delivered = len(set(re.findall(re.escape(p.tag.encode()) + rb"-(\d+)\"", data)))
        elif laurel:
            # laurel escapes saddr's bytes; it keeps auditd's ENRICHED interpretation.
            p.delivered = data.count(b'"SADDR":"{saddr_fam=inet laddr=127.0.0.1 lport=%d}"'
                                     % p.port)
        else:
            p.delivered = data.count(b"saddr=" + sockaddr_hex(p.port))


def count_in_agent(points: list[Point], data_dir: Path) -> None:
    out = subprocess.run([*AGENT, "decode", str(data_dir / "delivered")], capture_output=True,
                         check=True)
    execs = {p.tag: p for p in points if p.load == "exec"}
    ports = {p.port: p for p in points if p.load == "conn"}
    seen: dict[str, set[str]] = {tag: set() for tag in execs}
    for line in out.stdout.splitlines():
        event = json.loads(line)
        kind = event.get("t")
        if kind == "exec" and execs:
            for arg in event.get("argv") or []:
                tag = str(arg).rsplit("-", 1)[0]
                if tag in seen:
                    seen[tag].add(str(arg))
        elif kind == "net" and event.get("dir") == "out" and event.get("rport") in ports:
            ports[event["rport"]].delivered += int(event.get("hits", 1))
    for tag, p in execs.items():
        p.delivered = len(seen[tag])


# ---- the configurations -----------------------------------------------------------------------


def peer_rules() -> list[list[str]]:
    """The agent's rules (native/audit_netlink.c, install_arch_rules) as auditctl arguments:
    per arch, exec calls in one rule, network calls in another, and on i386 (native or the
    compat arch of x86_64) socketcall once per call number."""
    machine = os.uname().machine
    arches = ["b64", "b32"] if machine in ("x86_64", "aarch64") else ["b32"]
    i386 = machine in ("x86_64", "i386", "i686")
    rules = []
    for arch in arches:
        head = ["-a", "always,exit", "-F", f"arch={arch}"]
        net = ["connect", "accept", "accept4", "bind"]
        if arch == "b32" and i386:
            net.remove("accept")  # i386 has none of its own
        rules.append([*head, "-S", "execve", "-S", "execveat", "-k", PEER_KEY])
        rules.append([*head, *(a for call in net for a in ("-S", call)), "-k", PEER_KEY])
        if arch == "b32" and i386:
            rules += [[*head, "-S", "socketcall", "-F", f"a0={n}", "-k", PEER_KEY]
                      for n in (2, 3, 5, 18)]
    return rules


def debian_auditd_conf(log_file: Path, plugin_dir: Path, log_format: str) -> str:
    conf = Path("/etc/audit/auditd.conf").read_text()
    changed = {"log_file": str(log_file), "plugin_dir": str(plugin_dir),
               "log_format": log_format, "max_log_file_action": "IGNORE"}
    lines = []
    for line in conf.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in changed:
            line = f"{key} = {changed.pop(key)}"
        lines.append(line)
    lines += [f"{k} = {v}" for k, v in changed.items()]
    return "\n".join(lines) + "\n"


def laurel_plugin(plugin_dir: Path, work: Path) -> Path:
    """Debian's laurel plugin and config, pointed at work/laurel; returns its log."""
    config = Path("/etc/laurel/config.toml").read_text()
    config = re.sub(r'(?m)^directory = .*$', f'directory = "{work / "laurel"}"', config)
    # The run's whole log in one file: rotation would drop what is counted.
    config = re.sub(r"(?m)^size = .*$", "size = 100000000000", config)
    (work / "laurel.toml").write_text(config)
    plugin = Path("/etc/audit/plugins.d/laurel.conf").read_text()
    plugin = re.sub(r"(?m)^active = .*$", "active = yes", plugin)
    plugin = re.sub(r"(?m)^args = .*$", f"args = --config {work / 'laurel.toml'}", plugin)
    (plugin_dir / "laurel.conf").write_text(plugin)
    return work / "laurel" / "audit.log"


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes],
             log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"sweep: {what} not reached (exit {proc.poll()}):\n"
                             + log.read_text(errors="replace")[-4000:])
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def settle(root: int, seconds: float) -> None:
    """Wait `seconds`, then until the tree's CPU use is quiet (start-up work done), 30 s at
    most."""
    time.sleep(seconds)
    deadline = time.monotonic() + 30
    roles = Roles({"root": root})
    while time.monotonic() < deadline:
        before = roles.sample().total_s()
        time.sleep(1)
        if roles.sample().total_s() - before < 0.02:
            return


@contextlib.contextmanager
def run_peer(config: str, work: Path) -> Iterator[tuple[Roles, Callable[[list[Point]], None]]]:
    plugin_dir = work / "plugins.d"
    plugin_dir.mkdir()
    log_file = work / "audit.log"
    laurel_log = laurel_plugin(plugin_dir, work) if config == "laurel" else None
    conf_dir = work / "conf"
    conf_dir.mkdir()
    (conf_dir / "auditd.conf").write_text(
        debian_auditd_conf(log_file, plugin_dir,
                           "RAW" if config in ("raw", "raw-lean") else "ENRICHED"))
    os.chmod(conf_dir / "auditd.conf", 0o640)
    auditctl("-b", str(PEER_BACKLOG_LIMIT))
    auditctl("--backlog_wait_time", str(PEER_BACKLOG_WAIT))
    for rule in peer_rules():
        auditctl(*rule)
    if config == "raw-lean":
        for rule in LEAN_EXCLUSIONS:
            auditctl(*rule)
    daemon_log = work / "auditd.stderr"
    with open(daemon_log, "wb") as err:
        proc = subprocess.Popen(["auditd", "-n", "-c", str(conf_dir)], stdout=err, stderr=err)
    try:
        wait_for("auditd as the audit daemon", lambda: audit_status().get("pid") == proc.pid,
                 proc, daemon_log)
        if laurel_log is not None:
            wait_for("laurel running", lambda: len(descendants(proc.pid)) > 1, proc, daemon_log)
        settle(proc.pid, 2)
        roles = Roles({"auditd": proc.pid}, {"kauditd": kauditd_pid()})

        def count(points: list[Point]) -> None:
            stop(proc)
            count_in_log(points, (laurel_log or log_file).read_bytes(), laurel_log is not None)

        yield roles, count
    finally:
        if proc.poll() is None:
            stop(proc)


@contextlib.contextmanager
def run_agent(work: Path) -> Iterator[tuple[Roles, Callable[[list[Point]], None]]]:
    data_dir, runtime = work / "data", work / "run"
    config = work / "config.json"
    config.write_text("{}\n")  # the local default: every collector on
    agent_log = work / "agent.log"
    with open(agent_log, "wb") as err:
        proc = subprocess.Popen([*AGENT, "run", "--data-dir", str(data_dir), "--runtime-dir",
                                 str(runtime), "--config", str(config), "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for("the agent as the audit daemon, its rules in", lambda: (
            (runtime / "status.json").exists() and audit_status().get("pid") == proc.pid
            and "iot-micro-agent" in audit_rules()), proc, agent_log)
        settle(proc.pid, 3)
        roles = Roles({"micro-agent": proc.pid}, {"kauditd": kauditd_pid()})

        def count(points: list[Point]) -> None:
            rc = stop(proc)
            if rc != 0:
                raise SystemExit(f"sweep: micro-agent run exited {rc}:\n"
                                 + agent_log.read_text(errors="replace")[-4000:])
            count_in_agent(points, data_dir)

        yield roles, count
    finally:
        if proc.poll() is None:
            stop(proc)
        subprocess.run([*AGENT, "audit-restore", "--data-dir", str(data_dir)],
                       capture_output=True, check=False)


@contextlib.contextmanager
def held(lock: Path | None) -> Iterator[None]:
    if lock is None:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sweep_config(config: str, loads: list[str], rates: list[int], seconds: float,
                 spawner: Spawner, work_parent: Path, lock: Path | None,
                 keep: bool, round_no: int = 0) -> list[Point]:
    ok = False
    with held(lock):
        state = AuditState.read()
        owner = state.settings.get("pid", 0)
        if owner and pid_alive(owner):
            raise SystemExit(f"sweep: the kernel's audit is owned by pid {owner}: not measured")
        # Made once the lock is held: a run stopped while waiting for it leaves nothing.
        work = Path(tempfile.mkdtemp(prefix=f"agent-sweep-{config}-", dir=work_parent))
        work.chmod(0o755)  # laurel writes its log there after dropping to its own user
        try:
            runner = run_agent(work) if config == "agent" else run_peer(config, work)
            points = []
            with runner as (roles, count):
                for load in loads:
                    for rate in rates:
                        tag = f"sw{uuid.uuid4().hex[:8]}-{load}{rate}"
                        point = Point(config, load, rate, tag, round_no)
                        measure(point, roles, spawner, seconds, work)
                        print(f"  {LABELS[config]:16} {load:4} {rate:5}/s: reached "
                              f"{point.achieved_rate:.0f}/s, CPU {point.cpu_pct:.2f} % "
                              f"({', '.join(f'{k} {v:.2f} s' for k, v in point.cpu_s.items())})",
                              file=sys.stderr)
                        points.append(point)
                        time.sleep(1)
                count(points)
            ok = True
        finally:
            state.restore()
            if ok and not keep:
                shutil.rmtree(work, ignore_errors=True)
            elif not ok:
                print(f"sweep: {config}: its files kept in {work}", file=sys.stderr)
    return points


# ---- output -----------------------------------------------------------------------------------


def ratios(points: list[Point], load: str, rate: int, peer: str) -> list[float]:
    """The agent's CPU over the peer's at one load and rate, one per round that has both."""
    by = {(p.config, p.round): p for p in points if p.load == load and p.target_rate == rate}
    return [agent.total_cpu_s / other.total_cpu_s
            for (config, rnd), agent in sorted(by.items())
            if config == "agent" and (other := by.get((peer, rnd))) and other.total_cpu_s]


def table(points: list[Point], load: str, configs: list[str], rates: list[int]) -> str:
    """One row per rate: each configuration's CPU % (the median over the rounds) and the events
    delivered of those started (over every round); the agent over each auditd RAW (the median
    of the rounds' ratios, and with several rounds their lowest and highest)."""
    mine = [p for p in points if p.load == load]
    rounds = len({p.round for p in mine})
    unit = "exec/s" if load == "exec" else "connections/s"
    # The agent's CPU over each auditd RAW's (the goal is against RAW; lean asks the kernel
    # for what the agent asks).
    against = [c for c in ("raw", "raw-lean") if "agent" in configs and c in configs]
    head = f"| {unit} (reached) | " + " | ".join(LABELS[c] for c in configs)
    head += "".join(f" | micro-agent / {LABELS[c]}" for c in against)
    rows = [head + " |", "|---:|" + "---:|" * (len(configs) + len(against))]
    for rate in rates:
        at = [p for p in mine if p.target_rate == rate]
        reached = [p.achieved_rate for p in at]
        cells = [f"{rate} ({min(reached):.0f}-{max(reached):.0f})" if reached else str(rate)]
        for c in configs:
            runs = [p for p in at if p.config == c]
            if not runs:
                cells.append("")
                continue
            delivered, started = sum(p.delivered for p in runs), sum(p.started for p in runs)
            lost = sum(p.lost for p in runs)
            cells.append(f"{median([p.cpu_pct for p in runs]):.2f} %, {delivered}/{started}"
                         + (f" (**{lost} lost**)" if lost else ""))
        for c in against:
            got = ratios(mine, load, rate, c)
            cell = f"{median(got):.2f}" if got else ""
            if len(got) > 1:
                cell += f" ({min(got):.2f}-{max(got):.2f})"
            cells.append(cell)
        rows.append("| " + " | ".join(cells) + " |")
    if rounds > 1:
        rows.append(f"\n{rounds} rounds: CPU % is each point's median; a ratio is the median of "
                    "the rounds' ratios (lowest-highest)")
    return "\n".join(rows)


def plot(points: list[Point], load: str, configs: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=90)
    styles = {"raw": ("#1f77b4", "o"), "raw-lean": ("#17becf", "v"), "enriched": ("#9467bd", "s"),
              "laurel": ("#d62728", "^"), "agent": ("#2ca02c", "D")}
    lost_marked = False
    for config in configs:
        mine = [p for p in points if p.load == load and p.config == config]
        if not mine:
            continue
        color, marker = styles[config]
        xs = sorted({p.target_rate for p in mine})
        runs = {x: [p for p in mine if p.target_rate == x] for x in xs}
        ys = [median([p.cpu_pct for p in runs[x]]) for x in xs]
        # With rounds: the median, and a bar from the lowest to the highest round.
        low = [y - min(p.cpu_pct for p in runs[x]) for x, y in zip(xs, ys)]
        high = [max(p.cpu_pct for p in runs[x]) - y for x, y in zip(xs, ys)]
        ax.errorbar(xs, ys, yerr=[low, high], color=color, marker=marker, capsize=3,
                    label=LABELS[config])
        for x, y in zip(xs, ys):
            lost = sum(p.lost for p in runs[x])
            if lost:
                ax.plot([x], [y], "x", color="black", markersize=11,
                        label=None if lost_marked else "events lost")
                ax.annotate(f"{lost} lost", (x, y), fontsize=7,
                            xytext=(4, -10), textcoords="offset points")
                lost_marked = True
    raw = [p for p in points if p.load == load and p.config == "raw"]
    if raw and "agent" in configs:
        # The goal's line: a third of auditd RAW (its medians).
        xs = sorted({p.target_rate for p in raw})
        ax.plot(xs, [median([p.cpu_pct for p in raw if p.target_rate == x]) / 3 for x in xs],
                ":", color="#1f77b4", linewidth=1, label="a third of auditd RAW")
    ax.set_xscale("log", base=2)
    rates = sorted({p.target_rate for p in points if p.load == load})
    ax.set_xticks(rates, [str(r) for r in rates])
    ax.set_xlabel("exec/s" if load == "exec" else "TCP connect+close per s")
    ax.set_ylabel("CPU % of one core (kauditd included)")
    ax.set_title("exec load" if load == "exec" else "connection load")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} x {cpu}, "
            f"Python {platform.python_version()}")


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("auditd", "laurel"):
        got = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                             text=True, check=False)
        out[pkg] = got.stdout.strip() or "?"
    return out


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(bad)} (one of {allowed})")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30, help="per rate (default 30)")
    ap.add_argument("--rates", type=lambda s: [int(r) for r in parse_list(s)],
                    default=list(RATES))
    ap.add_argument("--configs", type=lambda s: parse_list(s, CONFIGS), default=list(CONFIGS))
    ap.add_argument("--loads", type=lambda s: parse_list(s, LOADS), default=list(LOADS))
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds: every configuration swept this many times, in alternating "
                    "orders; the table gives medians (default 1)")
    ap.add_argument("--out-dir", type=Path, default=REPO / ".benchmarks" / "sweep")
    ap.add_argument("--work-dir", type=Path, default=Path("/var/tmp"),
                    help="where logs and the agent's data go (a real disk, default /var/tmp)")
    ap.add_argument("--lock", type=Path, help="a file to flock for each configuration")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep each configuration's files")
    ap.add_argument("--report", type=Path, metavar="SWEEP_JSON",
                    help="measure nothing: the table and plots of a performance-sweep.json "
                    "written before")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.report is not None:
        return report(json.loads(args.report.read_text()), args.out_dir, not args.no_plot)
    if os.geteuid() != 0:
        print("sweep: needs root (auditd, the agent's audit ownership)", file=sys.stderr)
        return 2
    for tool in ("auditctl", "auditd") + (("laurel",) if "laurel" in args.configs else ()):
        if shutil.which(tool) is None:
            print(f"sweep: {tool} is missing (Debian packages auditd, laurel)", file=sys.stderr)
            return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Stopped early (SIGTERM): the daemon stopped and the audit state put back all the same.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    points: list[Point] = []

    def save() -> dict[str, object]:
        """performance-sweep.json, after each configuration: a run cut short keeps what it
        measured."""
        doc = {"started": started, "machine": machine(), "versions": versions(),
               "seconds": args.seconds, "rates": args.rates, "configs": args.configs,
               "loads": args.loads, "repeat": args.repeat, "tail_s": TAIL_S,
               "loadavg": Path("/proc/loadavg").read_text().split()[:3],
               "points": [p.as_json() for p in points]}
        (args.out_dir / "performance-sweep.json").write_text(json.dumps(doc, indent=1) + "\n")
        return doc

    with tempfile.TemporaryDirectory(prefix="agent-sweep-bin-") as tmp:
        spawner = Spawner.build(Path(tmp))
        for round_no in range(args.repeat):
            # Alternating orders: the configuration that ran last in one round runs first in
            # the next.
            order = args.configs if round_no % 2 == 0 else args.configs[::-1]
            for config in order:
                print(f"sweep: {LABELS[config]}"
                      + (f" (round {round_no + 1} of {args.repeat})" if args.repeat > 1 else ""),
                      file=sys.stderr)
                points += sweep_config(config, args.loads, args.rates, args.seconds, spawner,
                                       args.work_dir, args.lock, args.keep, round_no)
                doc = save()
    return report(doc, args.out_dir, not args.no_plot)


def report(doc: dict[str, object], out_dir: Path, plots: bool) -> int:
    """The table on stdout and the plots, from a performance-sweep.json document."""
    names = set(Point.__dataclass_fields__)
    points = [Point(**{k: v for k, v in p.items() if k in names})
              for p in doc["points"]]  # type: ignore[attr-defined]
    configs = [c for c in doc["configs"] if any(p.config == c for p in points)]  # type: ignore[attr-defined]
    rates: list[int] = doc["rates"]  # type: ignore[assignment]
    versions: dict[str, str] = doc["versions"]  # type: ignore[assignment]
    rounds = int(doc.get("repeat", 1))  # type: ignore[call-overload]
    print(f"{doc['started']}; {doc['machine']}; auditd {versions['auditd']}, laurel "
          f"{versions['laurel']}; {doc['seconds']:g} s per rate"
          + (f", {rounds} rounds" if rounds > 1 else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    for load in doc["loads"]:  # type: ignore[attr-defined]
        print(f"\n{load}: CPU % of one core (kauditd included), delivered/started\n")
        print(table(points, load, configs, rates))
        if plots:
            plot(points, load, configs, out_dir / f"performance-{load}.png")
    ticked = [f"{p.config} {p.load} {p.target_rate}/s: {', '.join(p.cpu_from_ticks)}"
              for p in points if p.cpu_from_ticks]
    if ticked:
        print("\nCPU read from 10 ms ticks (a thread ended inside the window): "
              + "; ".join(ticked))
    print(f"\n(written to {out_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
