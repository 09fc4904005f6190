"""Inventory collectors: one full run each beside the obvious alternative, time and peak memory.

Every side runs in a fresh child process, timed end to end from spawn to reaped (median of the
rounds). So both sides pay their own start-up: ours is a Python interpreter importing the agent
(python start-up included), the peers are C programs except psutil's, which is Python too.
The Python children also time themselves (imports, then the run alone) and those figures are
printed beside them; one more child of ours runs the collector WARM_RUNS more times after the
first and times those (what each interval costs a running agent, whose imports are done once).
A bare `python3 -c pass` is timed too, for scale (no peer).

Peak memory is the ru_maxrss of one more run of each side under GNU time (`/usr/bin/time -f
%M`, the `time` package), not the ru_maxrss of a child of this process: the kernel folds the
resident set of the image a child replaces at exec into its ru_maxrss, and a child of pytest
starts as a copy of pytest (about 30 MB), which would hide every peer's own peak. Under GNU
time the program starts as a copy of `time` (about 2 MB). For `ip netns exec`, which execs in
place, the peak is that of ip and then of the program.

Ours (`ours`): the collector class of agent.collectors (as `micro-agent collect NAME` runs it,
without the JSON printing): configured with the default configuration, started, one
collect() (the gatherer's snapshot packed and routed through the collector's aggregator into a
sink), stopped, its batches sealed and written to stdout as msgpack.

- SBoM: `dpkg-query -W` (name and version of every package dpkg knows) and, as a second peer,
  `dpkg-query -W -f` with the fields the collector reports (name, version, architecture,
  maintainer, source, state). Same work: our dpkg packages equal dpkg-query's, less those whose
  configuration files alone remain (no installed software).
- LocalUsers: `getent passwd` then `getent group` (two processes; their times add, the peak is
  the larger). Same work: the same accounts and groups (getent may add entries of another
  nsswitch source, which must then be absent from /etc/passwd, /etc/group).
- Firewall: `nft -j list ruleset`, inside a fresh network namespace (made by the fixture) that
  holds RULES rules (200; 40 under --benchmark-disable) of the shapes a device has (ports,
  prefixes, IPv4 and IPv6, sets, ranges, ct state, interfaces, jumps) in inet, ip and ip6
  tables. Ours runs there too, as `ip netns exec NS python3 -c ...`: both sides pay
  `ip netns exec`. Same work: the same rule count and chain count. Ours reads the ruleset only
  when its generation moved: the warm runs cost the generation request. The row `Firewall
  changed` is what a changed ruleset costs the running agent (one interval: generation, dump
  and decode in the C core, events through the aggregator) against `nft -j list ruleset`,
  both timed round by round in one child inside the namespace (the generation moved before
  each round); its peak MB is that child's VmHWM, and the table says by how much the
  gathering raised it (VmHWM reset after a first run, against VmRSS then).
- SystemInformation: a Python child calling psutil.net_if_addrs, net_if_stats,
  virtual_memory, boot_time, cpu_count and reading os-release and uname with platform, the
  fields ours reports that psutil has (psutil has no CPU model nor hardware vendor). Both
  sides run in a fresh namespace (made by the fixture) that holds a device's interfaces:
  loopback, two veth pairs (eth0/eth1, wlan0/usb0) and a bridge, with IPv4 and IPv6
  addresses, so that no other work on the machine adds or removes an interface between the
  two sides. Same work: the same interface names, MACs and IPv4 addresses, the same memory
  total.
- Baseline: no peer; ours alone, checked to give one event per check the default
  configuration enables (at least 30), each with a Pass, Fail, Skip or Error result.

Every side runs pinned to one CPU (conftest.bench_cpu; children inherit it). The table is
printed at the end of the module (test_zz_table) and, for a timed run, written to
.benchmarks/inventory.md (gitignored).

Run: cd benchmarks && PYTHONPATH=/tmp/SITE python3 -m pytest bench_inventory.py
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
from conftest import skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="inventory")

ROUNDS = 7
WARM_RUNS = 5
RULES = 200
RULES_QUICK = 40
RESULTS_MD = Path(__file__).resolve().parents[1] / ".benchmarks" / "inventory.md"

# The lane a collector run in a child writes into (both scripts below).
LANE = """\
class Lane:
    def __init__(self):
        self.sink = EventSink()
        self.batches = []

    def spill(self, batches):
        self.batches += batches
"""

# The collector run in the child: what `micro-agent collect NAME` does, less the JSON printing.
OURS = """\
import sys, time
t0 = time.perf_counter_ns()
from pathlib import Path
import msgpack
from agent.collectors import CLASSES, Environment
from agent.config import Config
from agent.native.sink import EventSink
t1 = time.perf_counter_ns()

""" + LANE + """
name, data_dir, warm = sys.argv[1], sys.argv[2], int(sys.argv[3])
lane = Lane()
collector = CLASSES[name](Environment(data_dir=Path(data_dir)))
collector.configure(Config.defaults())
collector.lane = lane
state = collector.start()
if state.state != "running":
    sys.exit(f"{name} is {state.state}: {state.reason}")
warm_ns = []
try:
    collector.collect(time.time_ns() // 1_000_000, lane)
    lane.spill(lane.sink.seal())
    t2 = time.perf_counter_ns()
    # More runs in the same process: what each interval costs a running agent, whose
    # imports are done once (and whose caches hold: an unchanged dpkg status or nftables
    # ruleset is not read again).
    for _ in range(warm):
        again = Lane()
        collector.lane = again
        t = time.perf_counter_ns()
        collector.collect(time.time_ns() // 1_000_000, again)
        again.spill(again.sink.seal())
        warm_ns.append(time.perf_counter_ns() - t)
finally:
    collector.stop()
stats = collector.stats()
sys.stdout.buffer.write(msgpack.packb({
    "import_ns": t1 - t0, "run_ns": t2 - t1, "warm_ns": warm_ns, "batches": lane.batches,
    "errors": stats.get("errors", 0), "skipped": getattr(collector, "last_skipped", []),
}))
"""

# The psutil peer of SystemInformation: the same fields, where psutil has them.
PSUTIL = """\
import time
t0 = time.perf_counter_ns()
import platform, socket, sys
import msgpack, psutil
t1 = time.perf_counter_ns()
addrs = psutil.net_if_addrs()
stats = psutil.net_if_stats()
mem = psutil.virtual_memory()
release = platform.freedesktop_os_release()
uname = platform.uname()
nics = {}
for name in sorted(set(addrs) | set(stats)):
    nic = {"ipv4": [], "ipv6": [], "mac": None}
    for a in addrs.get(name, ()):
        if a.family == socket.AF_INET:
            nic["ipv4"].append([a.address, a.netmask])
        elif a.family == socket.AF_INET6:
            nic["ipv6"].append([a.address, a.netmask])
        elif a.family == psutil.AF_LINK:
            nic["mac"] = a.address
    st = stats.get(name)
    if st is not None:
        nic["up"] = st.isup
        nic["mtu"] = st.mtu
    nics[name] = nic
sys.stdout.buffer.write(msgpack.packb({
    "nics": nics, "memtotal": mem.total, "memavail": mem.available,
    "os": release.get("NAME"), "osver": release.get("VERSION_ID"), "osid": release.get("ID"),
    "kernel": uname.release, "arch": uname.machine, "host": uname.node,
    "boot": psutil.boot_time(), "ncpu": psutil.cpu_count(),
    "import_ns": t1 - t0, "run_ns": time.perf_counter_ns() - t1,
}))
"""

DPKG_FIELDS = (
    "${binary:Package}\\t${Version}\\t${Architecture}\\t${Maintainer}\\t${source:Package}\\t"
    "${db:Status-Status}\\n"
)


def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def rounds_of(request: pytest.FixtureRequest) -> int:
    return 1 if quick(request) else ROUNDS


# ---------------------------------------------------------------------------------------------
# a child run


@dataclass(frozen=True)
class Run:
    """One child process (or several in turn): wall time spawn to reaped, CPU time, output."""

    wall: float  # seconds
    cpu: float  # user + system seconds of the child(ren)
    out: bytes


def spawn(argv: Sequence[str], env: dict[str, str] | None = None) -> Run:
    """Run argv to its end; its stdout, and its own rusage from wait4 (not the sum of every
    child this process ever reaped, which RUSAGE_CHILDREN would give)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=env)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise AssertionError(f"{argv[:4]}... exited {proc.returncode}: "
                                 f"{err.read().decode(errors='replace')[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime, out)


def spawn_all(argvs: Sequence[Sequence[str]]) -> Run:
    """Several commands in turn, as one side: times add, outputs are joined by NUL."""
    runs = [spawn(argv) for argv in argvs]
    return Run(sum(r.wall for r in runs), sum(r.cpu for r in runs),
               b"\0".join(r.out for r in runs))


GNU_TIME = "/usr/bin/time"


def peak_kib(argvs: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> int | None:
    """The peak RSS (KiB) of the commands run in turn (the largest), each under GNU time; None
    when GNU time is not installed."""
    if not os.access(GNU_TIME, os.X_OK):
        return None
    peaks = []
    for argv in argvs:
        with tempfile.NamedTemporaryFile("r") as report:
            spawn([GNU_TIME, "-f", "%M", "-o", report.name, *argv], env)
            peaks.append(int(report.read().split()[-1]))
    return max(peaks)


def _agent_env() -> dict[str, str]:
    """The environment of our child: the agent this process imports comes first on its path
    (the private install under test, not whatever site-packages holds)."""
    import agent

    site = str(Path(agent.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=site + (os.pathsep + rest if rest else ""))


@dataclass
class Ours:
    """What our child reported: its events and how long its parts took inside it."""

    events: list[dict[str, Any]]
    import_s: float
    run_s: float
    warm_s: list[float]
    errors: int
    skipped: list[str]


def ours_argv(name: str, data_dir: Path, netns: str | None = None, warm: int = 0) -> list[str]:
    """Our child; `warm` more runs after the first, timed apart (not for the timed rounds)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return prefix + [sys.executable, "-c", OURS, name, str(data_dir), str(warm)]


def decode_ours(out: bytes) -> Ours:
    from agent.jsonl import batch_events

    doc = msgpack.unpackb(out, raw=False)
    events = [e for batch in doc["batches"] for e in batch_events(batch)]
    return Ours(events, doc["import_ns"] / 1e9, doc["run_ns"] / 1e9,
                [ns / 1e9 for ns in doc["warm_ns"]], doc["errors"], list(doc["skipped"]))


# ---------------------------------------------------------------------------------------------
# measuring and the table


@dataclass
class Side:
    collector: str
    side: str  # "ours" or the peer's name
    walls: list[float]
    cpus: list[float]
    peak_kib: int | None
    items: str  # what the side produced, for the table
    imports: list[float] = field(default_factory=list)  # Python sides: imports in the child
    inner: list[float] = field(default_factory=list)  # Python sides: the run in the child
    warm: list[float] = field(default_factory=list)  # ours: later runs in one child

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak(self) -> str:
        return "" if self.peak_kib is None else f"{self.peak_kib / 1024:.1f}"

    @property
    def inside(self) -> str:
        if not self.inner:
            return ""
        text = (f"{statistics.median(self.imports) * 1000:.1f} + "
                f"{statistics.median(self.inner) * 1000:.1f}")
        if self.warm:
            text += f" ({statistics.median(self.warm) * 1000:.1f})"
        return text

    @property
    def cpu_share(self) -> float:
        wall = sum(self.walls)
        return sum(self.cpus) / wall if wall > 0 else 0.0


_SIDES: dict[tuple[str, str], Side] = {}
_TIMED: list[bool] = []
_ORDER = ("SBoM", "LocalUsers", "Firewall", "Firewall changed", "SystemInformation",
          "Baseline")


def measure(
    benchmark: BenchmarkFixture, rounds: int, target: Callable[[], Run]
) -> list[Run]:
    """target() once per round under pytest-benchmark (after one warm-up round when timed);
    the runs of the measured rounds."""
    runs: list[Run] = []

    def timed() -> None:
        runs.append(target())

    warmup = 1 if benchmark.enabled else 0
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)  # type: ignore[no-untyped-call]
    _TIMED.append(bool(benchmark.enabled))
    return runs[-rounds:]


def record(
    benchmark: BenchmarkFixture,
    collector: str,
    side: str,
    runs: Sequence[Run],
    items: str,
    peak: int | None,
    inside: Sequence[tuple[float, float]] = (),
    warm: Sequence[float] = (),
) -> None:
    result = Side(collector, side, [r.wall for r in runs], [r.cpu for r in runs], peak, items,
                  [i for i, _ in inside], [r for _, r in inside], list(warm))
    _SIDES[(collector, side)] = result
    benchmark.extra_info.update({
        "collector": collector, "side": side, "items": items,
        "median_ms": round(result.median * 1000, 2),
        "peak_kib": peak, "cpu_per_wall": round(result.cpu_share, 2),
    })


def run_ours(
    benchmark: BenchmarkFixture,
    request: pytest.FixtureRequest,
    name: str,
    data_dir: Path,
    netns: str | None = None,
) -> Ours:
    env = _agent_env()
    argv = ours_argv(name, data_dir, netns)
    runs = measure(benchmark, rounds_of(request), lambda: spawn(argv, env))
    decoded = [decode_ours(r.out) for r in runs]
    last = decoded[-1]
    assert last.errors == 0, f"{name} counted {last.errors} errors"
    _REFERENCE[name] = last
    counts: dict[str, int] = {}
    for event in last.events:
        counts[event["t"]] = counts.get(event["t"], 0) + 1
    warm = decode_ours(spawn(ours_argv(name, data_dir, netns, WARM_RUNS), env).out).warm_s
    record(benchmark, name, "ours", runs,
           ", ".join(f"{n} {t}" for t, n in sorted(counts.items())),
           peak_kib([argv], env), [(d.import_s, d.run_s) for d in decoded], warm)
    return last


# Our last run of each collector, for the peers' same-work checks (or made once by the peer's
# test when it runs alone).
_REFERENCE: dict[str, Ours] = {}


def reference(name: str, data_dir: Path, netns: str | None = None) -> Ours:
    if name not in _REFERENCE:
        _REFERENCE[name] = decode_ours(spawn(ours_argv(name, data_dir, netns), _agent_env()).out)
    return _REFERENCE[name]


def table() -> list[str]:
    lines = [
        ("| collector | ours ms | peer | peer ms | ours / peer | ours peak MB | peer peak MB "
         "| ours in child: imports + run (warm run) ms | ours made | peer made |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for collector in _ORDER:
        ours = _SIDES.get((collector, "ours"))
        peers = [s for (c, p), s in _SIDES.items() if c == collector and p != "ours"]
        ours_ms = f"{ours.median * 1000:.1f}" if ours else ""
        ours_mb = ours.peak if ours else ""
        inside = ours.inside if ours else ""
        made = ours.items if ours else ""
        if not peers:
            lines.append(f"| {collector} | {ours_ms} | (none) | | | {ours_mb} | | {inside} "
                         f"| {made} | |")
        for peer in peers:
            ratio = f"{ours.median / peer.median:.2f}" if ours else ""
            lines.append(f"| {collector} | {ours_ms} | {peer.side} | {peer.median * 1000:.1f} "
                         f"| {ratio} | {ours_mb} | {peer.peak} | {inside} | {made} "
                         f"| {peer.items} |")
    notes = [f"- {s.collector} / {s.side} in its child: imports + run {s.inside} ms"
             for s in _SIDES.values() if s.side != "ours" and s.inner]
    python = _SIDES.get(("Python", "python3 -c pass"))
    if python is not None:
        notes.append(f"- for scale, a bare interpreter (`python3 -c pass`, this one): "
                     f"{python.median * 1000:.1f} ms, peak {python.peak} MB")
    if not os.access(GNU_TIME, os.X_OK):  # a side measured in another's child has none either
        notes.append(f"- no peak memory: {GNU_TIME} (GNU time) is not installed")
    contended = [f"{s.collector}/{s.side}" for s in _SIDES.values() if s.cpu_share < 0.8]
    if contended:
        notes.append(f"- cpu/wall below 0.8 ({', '.join(contended)}): the pinned CPU was "
                     "shared with other work or the side waited; those times overstate it")
    timed = bool(_TIMED) and all(_TIMED)
    rounds = max((len(s.walls) for s in _SIDES.values()), default=0)
    lines += [
        "",
        ("ours / peer: median wall time of ours over the peer's (below 1: ours is faster). "
         "Every side is a fresh child, spawn to reaped; ours is a Python child (interpreter "
         "start-up and imports included); in its child it times its imports, its run and "
         f"(in one more child) the median of {WARM_RUNS} more runs in the same process, as "
         "each interval of a running agent costs. Peak MB: max RSS of one more run under "
         "GNU time."),
        (f"{rounds} round(s) each" + (" after a warm-up" if timed else "")
         + f"; pinned to one CPU; {platform.python_implementation()} "
         f"{platform.python_version()}; kernel {platform.release()}; "
         + ("timed by pytest-benchmark." if timed
            else "--benchmark-disable: one run each, figures are indicative only.")),
    ]
    if notes:
        lines += [""] + notes
    return lines


# ---------------------------------------------------------------------------------------------
# SBoM


@pytest.mark.benchmark(group="inventory-sbom")
def test_sbom_ours(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                   tmp_path: Path, bench_cpu: int) -> None:
    if not Path("/var/lib/dpkg/status").is_file():
        skip_unless_ci("no dpkg database on this machine")
    ours = run_ours(benchmark, request, "SBoM", tmp_path)
    assert sum(1 for e in ours.events if e["t"] == "pkg") > 50


def _dpkg_name(event: dict[str, Any]) -> str:
    # dpkg-query's ${binary:Package}: name:arch for Multi-Arch: same packages.
    return f"{event['name']}:{event['arch']}" if event.get("multiarch") == "same" else event["name"]


def _dpkg_query() -> str:
    tool = shutil.which("dpkg-query")
    if tool is None:
        skip_unless_ci("dpkg-query is not installed")
    return tool


def _sbom_same_work(lines: list[list[str]], gone: set[str], data_dir: Path) -> int:
    """Our dpkg packages equal dpkg-query's installed ones (names and versions); their count."""
    ours = {(_dpkg_name(e), e["ver"]) for e in reference("SBoM", data_dir).events
            if e["t"] == "pkg" and e["mgr"] == "dpkg"}
    theirs = {(row[0], row[1]) for row in lines if row[0] not in gone}
    assert ours == theirs, (sorted(ours - theirs)[:5], sorted(theirs - ours)[:5])
    return len(theirs)


def _dpkg_gone(tool: str) -> set[str]:
    """Packages of which only configuration files remain: dpkg-query lists them, the collector
    does not (no installed software)."""
    out = subprocess.run([tool, "-W", "-f", "${binary:Package}\\t${db:Status-Status}\\n"],
                         check=True, capture_output=True, text=True).stdout
    return {name for name, _, state in (line.partition("\t") for line in out.splitlines())
            if state in ("config-files", "not-installed")}


@pytest.mark.benchmark(group="inventory-sbom")
def test_sbom_dpkg_query(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                         tmp_path: Path, bench_cpu: int) -> None:
    tool = _dpkg_query()
    argv = [tool, "-W"]
    runs = measure(benchmark, rounds_of(request), lambda: spawn(argv))
    lines = [line.split("\t") for line in runs[-1].out.decode().splitlines()]
    gone = _dpkg_gone(tool)
    count = _sbom_same_work(lines, gone, tmp_path)
    record(benchmark, "SBoM", "dpkg-query -W", runs,
           f"{len(lines)} lines ({count} installed)", peak_kib([argv]))


@pytest.mark.benchmark(group="inventory-sbom")
def test_sbom_dpkg_query_fields(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                                tmp_path: Path, bench_cpu: int) -> None:
    tool = _dpkg_query()
    argv = [tool, "-W", "-f", DPKG_FIELDS]
    runs = measure(benchmark, rounds_of(request), lambda: spawn(argv))
    lines = [line.split("\t") for line in runs[-1].out.decode().splitlines()]
    gone = {row[0] for row in lines if row[5] in ("config-files", "not-installed")}
    count = _sbom_same_work(lines, gone, tmp_path)
    # The same fields too.
    by_name = {_dpkg_name(e): e for e in reference("SBoM", tmp_path).events
               if e["t"] == "pkg" and e["mgr"] == "dpkg"}
    for name, _ver, arch, maintainer, source, _state in lines:
        if name in by_name:
            event = by_name[name]
            assert (event["arch"], event["vendor"]) == (arch, maintainer), name
            assert event.get("srcpkg", name.split(":")[0]) == source, name
    record(benchmark, "SBoM", "dpkg-query -W -f (same fields)", runs,
           f"{len(lines)} lines ({count} installed)", peak_kib([argv]))


# ---------------------------------------------------------------------------------------------
# LocalUsers


@pytest.mark.benchmark(group="inventory-users")
def test_users_ours(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                    tmp_path: Path, bench_cpu: int) -> None:
    ours = run_ours(benchmark, request, "LocalUsers", tmp_path)
    assert any(e["t"] == "user" and e["name"] == "root" for e in ours.events)


def _file_names(path: str) -> set[str]:
    return {line.split(":", 1)[0] for line in Path(path).read_text().splitlines()
            if line and not line.startswith(("#", "+", "-"))}


@pytest.mark.benchmark(group="inventory-users")
def test_users_getent(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                      tmp_path: Path, bench_cpu: int) -> None:
    tool = shutil.which("getent")
    if tool is None:
        skip_unless_ci("getent is not installed")
    argvs = [[tool, "passwd"], [tool, "group"]]
    runs = measure(benchmark, rounds_of(request), lambda: spawn_all(argvs))
    passwd_out, group_out = runs[-1].out.split(b"\0")
    theirs = {
        "user": {line.split(":", 1)[0] for line in passwd_out.decode().splitlines()},
        "group": {line.split(":", 1)[0] for line in group_out.decode().splitlines()},
    }
    events = reference("LocalUsers", tmp_path).events
    for kind, path in (("user", "/etc/passwd"), ("group", "/etc/group")):
        ours = {e["name"] for e in events if e["t"] == kind}
        # getent also asks nsswitch's other sources (systemd adds root and nobody when the
        # files lack them): what it has beyond ours must come from elsewhere than the files.
        assert ours <= theirs[kind], sorted(ours - theirs[kind])
        assert not (theirs[kind] - ours) & _file_names(path)
        assert ours == _file_names(path)
    record(benchmark, "LocalUsers", "getent passwd + getent group", runs,
           f"{len(theirs['user'])} user, {len(theirs['group'])} group", peak_kib(argvs))


# ---------------------------------------------------------------------------------------------
# Firewall


def ruleset(count: int) -> str:
    """`count` rules of the shapes a device's firewall holds, in inet, ip and ip6 tables."""
    shapes: list[Callable[[int], tuple[str, str]]] = [
        lambda i: ("inet filt input", f"tcp dport {1000 + i} accept"),
        lambda i: ("inet filt input",
                   f"ip saddr 10.{i % 250}.{i // 250}.0/24 udp dport {{ 53, {2000 + i} }} accept"),
        lambda i: ("inet filt input", f"ip6 saddr 2001:db8:{i:x}::/48 tcp dport {3000 + i} drop"),
        lambda i: ("inet filt forward",
                   f"ip daddr 192.0.2.{i % 250} tcp sport 1000-2000 counter reject"),
        lambda i: ("inet filt input", f'iifname "eth{i % 4}" ct state established,related accept'),
        lambda i: ("inet filt input", "ip saddr @blocked drop"),
        lambda i: ("inet filt custom",
                   f"ip6 daddr 2001:db8::{i:x} tcp dport {{ 443, 8000-8100 }} accept"),
        lambda i: ("ip v4 output", f"ip daddr 198.51.100.{i % 250} udp dport {4000 + i} drop"),
        lambda i: ("ip6 v6 fw6", f"ip6 saddr 2001:db8:1::/48 udp dport != {5000 + i} drop"),
        lambda i: ("inet filt input", "jump custom"),
    ]
    chains: dict[str, list[str]] = {}
    for i in range(count):
        where, rule = shapes[i % len(shapes)](i)
        chains.setdefault(where, []).append(rule)
    heads = {
        "inet filt input": "type filter hook input priority 0; policy drop;",
        "inet filt forward": "type filter hook forward priority 0; policy drop;",
        "inet filt custom": "",
        "ip v4 output": "type filter hook output priority 0; policy accept;",
        "ip6 v6 fw6": "type filter hook forward priority -10; policy accept;",
    }
    out: list[str] = []
    for table in ("inet filt", "ip v4", "ip6 v6"):
        out.append(f"table {table} {{")
        if table == "inet filt":
            out.append("  set blocked { type ipv4_addr; flags interval; "
                       "elements = { 10.9.9.9, 10.8.0.0/16, 172.16.1.1-172.16.1.9 }; }")
        for where, head in heads.items():
            if not where.startswith(table + " "):
                continue
            out.append(f"  chain {where.split()[-1]} {{")
            if head:
                out.append(f"    {head}")
            out += [f"    {rule}" for rule in chains.get(where, [])]
            out.append("  }")
        out.append("}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Namespace:
    name: str
    rules: int = 0
    chains: int = 0


def _netns(prefix: str) -> Iterator[str]:
    if shutil.which("ip") is None:
        skip_unless_ci("iproute2 (ip) is not installed")
    name = f"{prefix}-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        skip_unless_ci(f"cannot create a network namespace: {done.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def fw_netns(request: pytest.FixtureRequest) -> Iterator[Namespace]:
    if shutil.which("nft") is None:
        skip_unless_ci("nft is not installed")
    count = RULES_QUICK if quick(request) else RULES
    for name in _netns("inv-bench-fw"):
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=ruleset(count),
                       text=True, check=True, capture_output=True)
        yield Namespace(name, count, 5)


def _nft_counts(out: bytes) -> tuple[int, int]:
    items = json.loads(out)["nftables"]
    return (sum(1 for item in items if "rule" in item), sum(1 for item in items if "chain" in item))


@pytest.mark.benchmark(group="inventory-firewall")
def test_firewall_ours(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                       tmp_path: Path, fw_netns: Namespace, bench_cpu: int) -> None:
    ours = run_ours(benchmark, request, "Firewall", tmp_path, fw_netns.name)
    rules = [e for e in ours.events if e["t"] == "fwrule"]
    assert len(rules) == fw_netns.rules
    assert sum(1 for e in ours.events if e["t"] == "fwchain") == fw_netns.chains
    # Decoded, not only counted: every rule has its verdict, and the port rules their ports.
    assert all("verdict" in e for e in rules)
    assert sum(1 for e in rules if "dport" in e) >= fw_netns.rules // 2


@pytest.mark.benchmark(group="inventory-firewall")
def test_firewall_nft(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                      tmp_path: Path, fw_netns: Namespace, bench_cpu: int) -> None:
    argv = ["ip", "netns", "exec", fw_netns.name, "nft", "-j", "list", "ruleset"]
    runs = measure(benchmark, rounds_of(request), lambda: spawn(argv))
    rules, chains = _nft_counts(runs[-1].out)
    assert (rules, chains) == (fw_netns.rules, fw_netns.chains)
    events = reference("Firewall", tmp_path, fw_netns.name).events
    assert sum(1 for e in events if e["t"] == "fwrule") == rules
    assert sum(1 for e in events if e["t"] == "fwchain") == chains
    record(benchmark, "Firewall", "ip netns exec + nft -j list ruleset", runs,
           f"{chains} chain, {rules} rule", peak_kib([argv]))


# A changed ruleset, side by side in one child inside the namespace: each round moves the
# ruleset's generation (a table added and deleted, untimed), then times `nft -j list ruleset`
# (spawned from here, so without `ip netns exec`) and one interval of our collector, which
# dumps and decodes the ruleset in the agent's process. The gathering's memory: the process's
# VmHWM after it was reset (clear_refs 5) once the collector had run once, against its VmRSS
# then.
FIREWALL_CHANGED = """\
import os, subprocess, sys, time
from pathlib import Path
import msgpack
from agent.collectors import CLASSES, Environment
from agent.config import Config
from agent.native.sink import EventSink

""" + LANE + """
def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

rounds = int(sys.argv[2])
collector = CLASSES["Firewall"](Environment(data_dir=Path(sys.argv[1])))
collector.configure(Config.defaults())
lane = Lane()
collector.lane = lane
assert collector.start().state == "running"
collector.collect(time.time_ns() // 1_000_000, lane)
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")
rss = status_kib("VmRSS")
ours, ours_cpu, nft, nft_cpu = [], [], [], []
for _ in range(rounds):
    subprocess.run(["nft", "add", "table", "ip", "bench_bump"], check=True)
    subprocess.run(["nft", "delete", "table", "ip", "bench_bump"], check=True)
    t, c = time.perf_counter(), time.process_time()
    lane = Lane()
    collector.lane = lane
    unchanged = collector.counters["unchanged"]
    collector.collect(time.time_ns() // 1_000_000, lane)
    lane.spill(lane.sink.seal())
    ours.append(time.perf_counter() - t)
    ours_cpu.append(time.process_time() - c)
    assert collector.counters["unchanged"] == unchanged, "the ruleset was not dumped again"
    t = time.perf_counter()
    proc = subprocess.Popen(["nft", "-j", "list", "ruleset"], stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    nft.append(time.perf_counter() - t)
    nft_cpu.append(usage.ru_utime + usage.ru_stime)
hwm = status_kib("VmHWM")
collector.stop()
sys.stdout.buffer.write(msgpack.packb({
    "ours": ours, "ours_cpu": ours_cpu, "nft": nft, "nft_cpu": nft_cpu, "rss_kib": rss,
    "hwm_kib": hwm, "batches": lane.batches, "errors": collector.stats().get("errors", 0),
    "nft_out": out}))
"""


@pytest.mark.benchmark(group="inventory-firewall")
def test_firewall_changed(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                          tmp_path: Path, fw_netns: Namespace, bench_cpu: int) -> None:
    """What a changed ruleset costs the running agent (one interval whose generation moved:
    generation request, dump, decode in the core, events through the aggregator) against
    `nft -j list ruleset` on the same ruleset, interleaved round by round in one child in the
    namespace; and how much the gathering raises the agent's peak RSS."""
    rounds = 3 if quick(request) else 15
    argv = ["ip", "netns", "exec", fw_netns.name, sys.executable, "-c", FIREWALL_CHANGED,
            str(tmp_path), str(rounds)]
    [run] = measure(benchmark, 1, lambda: spawn(argv, _agent_env()))
    doc = msgpack.unpackb(run.out, raw=False)
    from agent.jsonl import batch_events

    events = [e for batch in doc["batches"] for e in batch_events(batch)]
    rules = sum(1 for e in events if e["t"] == "fwrule")
    assert rules == fw_netns.rules and doc["errors"] == 0
    assert _nft_counts(doc["nft_out"]) == (fw_netns.rules, fw_netns.chains)
    grew = doc["hwm_kib"] - doc["rss_kib"]
    ours = [Run(w, c, b"") for w, c in zip(doc["ours"], doc["ours_cpu"])]
    theirs = [Run(w, c, b"") for w, c in zip(doc["nft"], doc["nft_cpu"])]
    record(benchmark, "Firewall changed", "nft -j list ruleset (same child)", theirs,
           f"{fw_netns.chains} chain, {rules} rule", None)
    record(benchmark, "Firewall changed", "ours", ours,
           f"{rules} rule in the agent; its peak RSS grew {grew} KiB", doc["hwm_kib"])
    benchmark.extra_info["gather_peak_growth_kib"] = grew
    # Both sides were timed here, so the ratio the baseline keeps (benchmarks/baseline.py,
    # `within`) is recorded here too: nft's median over ours.
    benchmark.extra_info["nft_over_ours"] = round(
        statistics.median(r.wall for r in theirs) / statistics.median(r.wall for r in ours), 3)
    # The gathering must stay far under the 20 MB a child of its own was allowed.
    assert grew < 20 * 1024


# ---------------------------------------------------------------------------------------------
# SystemInformation


# A device's interfaces: name, peer (veth) or None (bridge), IPv4, IPv6.
_NICS = (
    ("eth0", "eth1", "192.168.1.10/24", "2001:db8:1::10/64"),
    ("eth1", None, "192.168.1.11/24", "2001:db8:1::11/64"),
    ("wlan0", "usb0", "10.0.0.5/16", "2001:db8:2::5/64"),
    ("usb0", None, "172.16.0.1/30", None),
    ("br0", None, "192.168.50.1/24", "fd00:50::1/64"),
)


@pytest.fixture(scope="module")
def si_netns() -> Iterator[Namespace]:
    for name in _netns("inv-bench-si"):
        ip = ["ip", "-n", name]
        commands = [ip + ["link", "set", "lo", "up"]]
        for nic, peer, v4, v6 in _NICS:
            if peer is not None:
                commands.append(ip + ["link", "add", nic, "type", "veth", "peer", "name", peer])
            elif nic == "br0":
                commands.append(ip + ["link", "add", nic, "type", "bridge"])
        for nic, _peer, v4, v6 in _NICS:
            commands.append(ip + ["addr", "add", v4, "dev", nic])
            if v6 is not None:
                commands.append(ip + ["-6", "addr", "add", v6, "dev", nic, "nodad"])
            commands.append(ip + ["link", "set", nic, "up"])
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        yield Namespace(name)


def _psutil_argv(netns: str) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-c", PSUTIL]


@pytest.mark.benchmark(group="inventory-sysinfo")
def test_sysinfo_ours(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                      tmp_path: Path, si_netns: Namespace, bench_cpu: int) -> None:
    ours = run_ours(benchmark, request, "SystemInformation", tmp_path, si_netns.name)
    names = {e["name"] for e in ours.events if e["t"] == "netif"}
    assert names == {"lo"} | {nic[0] for nic in _NICS}


@pytest.mark.benchmark(group="inventory-sysinfo")
def test_sysinfo_psutil(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                        tmp_path: Path, si_netns: Namespace, bench_cpu: int) -> None:
    import psutil  # noqa: F401 (a test dependency; the child imports it too)
    argv = _psutil_argv(si_netns.name)
    runs = measure(benchmark, rounds_of(request), lambda: spawn(argv))
    theirs = msgpack.unpackb(runs[-1].out, raw=False)
    events = reference("SystemInformation", tmp_path, si_netns.name).events
    nics = {e["name"]: e for e in events if e["t"] == "netif"}
    (info,) = [e for e in events if e["t"] == "sysinfo"]
    assert set(nics) == set(theirs["nics"])
    for name, nic in theirs["nics"].items():
        ours = nics[name]
        assert ours.get("mac") == nic["mac"], name
        v4 = sorted(str(ipaddress.ip_interface(f"{a}/{m}")) for a, m in nic["ipv4"])
        assert sorted(ours["ipv4"]) == v4, name
        assert len(ours["ipv6"]) == len(nic["ipv6"]), name
        assert (ours["up"], ours["mtu"]) == (nic["up"], nic["mtu"]), name
    assert info["memtotal"] == theirs["memtotal"]
    assert (info["kernel"], info["arch"], info["ncpu"]) == (
        theirs["kernel"], theirs["arch"], theirs["ncpu"])
    assert (info.get("os"), info.get("osid")) == (theirs["os"], theirs["osid"])
    inside = [(d["import_ns"] / 1e9, d["run_ns"] / 1e9)
              for d in (msgpack.unpackb(r.out, raw=False) for r in runs)]
    record(benchmark, "SystemInformation", "python3 + psutil + platform", runs,
           f"{len(theirs['nics'])} netif", peak_kib([argv]), inside)


# ---------------------------------------------------------------------------------------------
# Baseline


@pytest.mark.benchmark(group="inventory-baseline")
def test_baseline_ours(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                       tmp_path: Path, bench_cpu: int) -> None:
    from agent.config import Config
    from agent.inventory.baseline import enabled_checks

    section = Config.defaults().baseline
    expected = {c.id for c in enabled_checks(section.groups_disabled, section.checks_disabled)}
    ours = run_ours(benchmark, request, "Baseline", tmp_path)
    assert len(expected) >= 30
    ids = [e["id"] for e in ours.events if e["t"] == "baseline"]
    assert sorted(ids) == sorted(expected)
    assert {e["res"] for e in ours.events} <= {"Pass", "Fail", "Skip", "Error"}


# ---------------------------------------------------------------------------------------------
# the table


@pytest.mark.benchmark(group="inventory-python")
def test_python_startup(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                        bench_cpu: int) -> None:
    """For scale, not a peer: what any Python side pays before its first line."""
    argv = [sys.executable, "-c", "pass"]
    env = _agent_env()
    runs = measure(benchmark, rounds_of(request), lambda: spawn(argv, env))
    assert all(r.out == b"" for r in runs)
    record(benchmark, "Python", "python3 -c pass", runs, "nothing", peak_kib([argv], env))


def test_zz_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The side-by-side table (needs the tests above in the same run)."""
    if not _SIDES:
        pytest.skip("run with the other benchmarks of this file")
    lines = table()
    with capsys.disabled():
        print("\n" + " inventory: one full run per side, each a fresh child process ".center(96, "="))
        print("\n".join(lines))
        if not all(_TIMED):
            return  # a --benchmark-disable run does not replace the last timed table
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        try:
            RESULTS_MD.parent.mkdir(exist_ok=True)
            RESULTS_MD.write_text(f"# inventory ({stamp})\n\n" + "\n".join(lines) + "\n")
        except OSError as exc:
            print(f"(could not write {RESULTS_MD}: {exc})")
        else:
            print(f"(written to {RESULTS_MD})")
