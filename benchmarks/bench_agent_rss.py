"""The agent on its embedded default (no IoT Hub, every collector on) beside a bare interpreter:
memory, start-up and idle wake-ups (issue 15: at most 20 MB RSS, every collector running
within 1 s, wake-ups counted and each justified in docs/performance.md).

Both peers are the same interpreter (sys.executable, so the same site packages and start-up
files): a bare one that only sleeps, and `micro-agent run --config {}`. Both run from byte
code, as installed (the package ships a .pyc beside every module): PYTHONDONTWRITEBYTECODE is
dropped and PYTHONPYCACHEPREFIX names a cache that a first, unmeasured run of each peer fills.
Both run with -S and this process's module path, so that no start-up (.pth) file of the
machine's site-packages runs code in them (the package's launcher has only path entries).
Compiling the sources at every start instead costs the agent about 2 MB of RSS (the compiler's
memory, freed into holes) and start-up time. The agent's measured run is its second start on
the same data directory: a device's restart. Each settles (20 s, 3 s
under --benchmark-disable), then VmRSS and VmHWM come from /proc/PID/status and the resident
set's parts from /proc/PID/smaps_rollup (Anonymous: the heap and the C core's buffers; the
rest: mapped files, the interpreter and the shared libraries). Wake-ups: the voluntary and
involuntary context switches of every thread of the process over 60 s of idle (10 s under
--benchmark-disable), per thread; each one is a return from a wait.

Start-up: from the exec of `micro-agent run` (its second start) to the first status.json that
shows every collector started (running, or unavailable on this machine with its reason; the loop writes
status.json after its first turn).

    cd benchmarks && python3 -m pytest bench_agent_rss.py [--benchmark-disable]

Needs root (the Process collector takes the kernel's audit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

from agent.uplink.identity import DEFAULT_CONNECTION_STRING_FILE

pytestmark = pytest.mark.benchmark(group="agent-rss")

SETTLE_S, QUICK_SETTLE_S = 20.0, 3.0
IDLE_S, QUICK_IDLE_S = 60.0, 10.0
BARE = "import sys, time\nprint('ready', flush=True)\ntime.sleep(3600)\n"


@dataclass
class Figures:
    peer: str
    rss_kb: int
    hwm_kb: int
    anon_kb: int
    file_kb: int
    startup_s: float | None = None
    wakeups_per_s: float | None = None
    threads: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_FIGURES: list[Figures] = []


@pytest.fixture(scope="module")
def bytecode_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of both peers: byte code cached in a directory of this run."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("IOTHUB_")}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    # Both peers run with -S and this process's module path: the same modules, without the
    # code that start-up (.pth) files of the machine's site-packages may run (one on the
    # test machine imports certifi: 5 MB in each peer that the device's interpreter has not).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    return env


def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def memory_kb(pid: int) -> tuple[int, int, int, int]:
    """(VmRSS, VmHWM, anonymous, file-backed) of a process, in kB."""
    status: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            status[name] = int(value.split()[0])
    return (status["VmRSS"], status["VmHWM"], status["RssAnon"],
            status["RssFile"] + status.get("RssShmem", 0))


def settled_memory(pid: int, settle_s: float) -> tuple[int, int, int, int]:
    """After `settle_s`: the median of five reads 0.2 s apart (VmHWM: the largest)."""
    time.sleep(settle_s)
    samples = []
    for _ in range(5):
        samples.append(memory_kb(pid))
        time.sleep(0.2)
    samples.sort()
    rss, _, anon, file_kb = samples[2]
    return rss, max(s[1] for s in samples), anon, file_kb


def switches(pid: int) -> dict[str, int]:
    """Context switches (voluntary + involuntary) so far, per thread ("comm/tid")."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            n = 0
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
        out[f"{comm}/{task.name}"] = n
    return out


def wakeups(pid: int, seconds: float) -> tuple[float, dict[str, float]]:
    """Wake-ups per second over `seconds`, in all and per thread (threads alive at both ends;
    one that came or went is counted from its own start or to its end)."""
    before = switches(pid)
    time.sleep(seconds)
    after = switches(pid)
    per = {name: (after.get(name, 0) - before.get(name, 0)) / seconds
           for name in sorted(set(before) | set(after))}
    per = {name: rate for name, rate in per.items() if rate > 0}
    return sum(per.values()), per


@pytest.fixture(scope="module", autouse=True)
def table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _FIGURES:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            _write_table(reporter)
    else:
        _write_table(reporter)


def _write_table(reporter: Any) -> None:
    reporter.write_sep("=", "the agent on its local default beside a bare interpreter")
    reporter.write_line("| peer | VmRSS MB | VmHWM MB | anonymous MB | files MB | start-up s | "
                        "wake-ups/s | notes |")
    reporter.write_line("|---|---:|---:|---:|---:|---:|---:|---|")
    for f in _FIGURES:
        startup = "" if f.startup_s is None else f"{f.startup_s:.2f}"
        wake = "" if f.wakeups_per_s is None else f"{f.wakeups_per_s:.2f}"
        reporter.write_line(
            f"| {f.peer} | {f.rss_kb / 1024:.1f} | {f.hwm_kb / 1024:.1f} | {f.anon_kb / 1024:.1f} "
            f"| {f.file_kb / 1024:.1f} | {startup} | {wake} | {'; '.join(f.notes)} |")
    bare = next((f for f in _FIGURES if f.peer == "bare interpreter"), None)
    for agent in (f for f in _FIGURES if f.peer != "bare interpreter"):
        if bare is not None:
            reporter.write_line(f"{agent.peer}: {(agent.rss_kb - bare.rss_kb) / 1024:.1f} MB RSS "
                                f"more than the bare interpreter ({agent.rss_kb / bare.rss_kb:.2f}x)")
    for f in _FIGURES:
        if f.threads:
            reporter.write_line(f"{f.peer}: wake-ups/s per thread: " + ", ".join(
                f"{name} {rate:.2f}" for name, rate in f.threads.items()))


def test_rss_bare_interpreter(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                              bytecode_env: dict[str, str]) -> None:
    settle = QUICK_SETTLE_S if quick(request) else SETTLE_S
    subprocess.run([sys.executable, "-S", "-c", "pass"], env=bytecode_env, check=True)  # compiles
    proc = subprocess.Popen([sys.executable, "-S", "-c", BARE], stdout=subprocess.PIPE, text=True,
                            env=bytecode_env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        result: list[tuple[int, int, int, int]] = []
        benchmark.pedantic(lambda: result.append(settled_memory(proc.pid, settle)),  # type: ignore[no-untyped-call]
                           rounds=1, iterations=1, warmup_rounds=0)
    finally:
        proc.kill()
        proc.wait()
    rss, hwm, anon, file_kb = result[0]
    _FIGURES.append(Figures("bare interpreter", rss, hwm, anon, file_kb,
                            notes=[f"{Path(sys.executable).name} -S -c 'time.sleep()'"]))
    benchmark.extra_info.update({"vmrss_kb": rss, "vmhwm_kb": hwm, "anon_kb": anon})


# `micro-agent run` as far as its loop: Agent.run replaced by one that reports VmRSS and returns.
AT_THE_LOOP = r"""
import sys
import agent.pipeline

def report(self):
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")):
            print(line.strip(), flush=True)
    return 0

agent.pipeline.Agent.run = report
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_rss_at_the_loop_start(benchmark: BenchmarkFixture, tmp_path: Path,
                               bytecode_env: dict[str, str]) -> None:
    """The imports and the objects the run builds, before any collector starts: what lazy
    imports change, without root or the kernel's audit."""
    if Path(DEFAULT_CONNECTION_STRING_FILE).exists():
        pytest.skip(f"{DEFAULT_CONNECTION_STRING_FILE} exists: this machine has no local default")
    config = tmp_path / "config.json"
    config.write_text("{}")
    args = [sys.executable, "-S", "-c", AT_THE_LOOP, "run", "--data-dir", str(tmp_path / "data"),
            "--config", str(config), "--log-level", "warning"]
    subprocess.run(args, env=bytecode_env, check=True, capture_output=True)  # compiles
    out: list[str] = []
    benchmark.pedantic(lambda: out.append(subprocess.run(  # type: ignore[no-untyped-call]
        args, env=bytecode_env, check=True, capture_output=True, text=True).stdout),
        rounds=1, iterations=1, warmup_rounds=0)
    status = {line.split(":")[0]: int(line.split()[1]) for line in out[0].splitlines()}
    _FIGURES.append(Figures("micro-agent run, at its loop's start (no collector started)",
                            status["VmRSS"], status["VmHWM"], status["RssAnon"],
                            status["RssFile"] + status.get("RssShmem", 0)))
    benchmark.extra_info.update({"vmrss_kb": status["VmRSS"], "anon_kb": status["RssAnon"]})


def _collectors(data: Path) -> dict[str, str]:
    try:
        status = json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: str(c.get("state", "")) for name, c in status.get("collectors", {}).items()}


def _all_started(states: dict[str, str]) -> bool:
    # Started: running, or unavailable on this machine (the state says why; the notes name
    # it). None is disabled: the configuration is the defaults.
    return bool(states) and all(s in ("running", "unavailable") for s in states.values())


def start_agent(data: Path, config: Path, env: dict[str, str]
                ) -> tuple[subprocess.Popen[str], float, dict[str, str]]:
    """`micro-agent run` until every collector started: (the process, seconds from its exec
    to that status.json, the collectors' states)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-S", "-m", "agent.cli", "run", "--data-dir", str(data),
         "--config", str(config), "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True, env=env)
    deadline = started + 60
    while not _all_started(states := _collectors(data)):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read() if proc.stderr else "")
        if time.monotonic() > deadline:
            stop_agent(proc)
            raise AssertionError(f"not every collector started in 60 s: {states}")
        time.sleep(0.01)
    return proc, time.monotonic() - started, states


def stop_agent(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err


def test_rss_local_default_every_collector(benchmark: BenchmarkFixture,
                                           request: pytest.FixtureRequest, tmp_path: Path,
                                           bytecode_env: dict[str, str]) -> None:
    if os.geteuid() != 0:
        skip_unless_ci("the Process collector needs root (kernel audit)")
    if Path(DEFAULT_CONNECTION_STRING_FILE).exists():
        pytest.skip(f"{DEFAULT_CONNECTION_STRING_FILE} exists: this machine has no local default")
    settle = QUICK_SETTLE_S if quick(request) else SETTLE_S
    idle = QUICK_IDLE_S if quick(request) else IDLE_S
    config = tmp_path / "config.json"
    config.write_text("{}")  # the defaults: every collector on, no hub
    data = tmp_path / "data"
    first, _, _ = start_agent(data, config, bytecode_env)  # compiles; makes the agent id
    stop_agent(first)
    (data / "status.json").unlink()
    proc, startup, states = start_agent(data, config, bytecode_env)
    result: list[tuple[tuple[int, int, int, int], tuple[float, dict[str, float]]]] = []
    try:
        def measure() -> None:
            memory = settled_memory(proc.pid, settle)
            result.append((memory, wakeups(proc.pid, idle)))

        benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)  # type: ignore[no-untyped-call]
        states = _collectors(data)
    finally:
        stop_agent(proc)
    # Same work as measured: every collector still started at the end, the Process one running.
    assert _all_started(states) and states.get("Process") == "running", states
    (rss, hwm, anon, file_kb), (wake, per_thread) = result[0]
    running = sorted(n for n, s in states.items() if s == "running")
    other = sorted(n for n, s in states.items() if s != "running")
    _FIGURES.append(Figures("micro-agent run (local default)", rss, hwm, anon, file_kb, startup,
                            wake, per_thread, [f"{len(running)} collectors running"]
                            + ([f"unavailable: {', '.join(other)}"] if other else [])))
    benchmark.extra_info.update({"vmrss_kb": rss, "vmhwm_kb": hwm, "anon_kb": anon,
                                 "startup_s": round(startup, 3), "wakeups_per_s": round(wake, 2),
                                 "collectors": states})
