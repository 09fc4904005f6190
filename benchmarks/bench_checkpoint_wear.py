"""Flash wear of the crash checkpoints (docs/outbox.md, "Checkpoints"): bytes the agent
process wrote to the block layer (/proc/PID/io write_bytes: its fsyncs and its share of the
writeback) per hour, with Outbox_CheckpointSeconds 10 (the default) and 0 (off), idle, at
100 exec/s of one command (/bin/true: one aggregated entry whose hits change) and at 100
exec/s of distinct commands (/bin/echo <unique tag>: a new entry each, the worst case).

`micro-agent run` with the Process collector alone (the others would add their own periodic
writes), status.json in a runtime directory on /dev/shm (as under systemd: tmpfs), a fresh
data directory each phase under AGENT_BENCH_DIR (default /var/tmp: a real
disk, not tmpfs, whose writes are counted). Each phase settles 5 s, then is measured for
AGENT_BENCH_WEAR_S seconds (default 40; 1 and 3 s with --benchmark-disable, as in CI). Root and the kernel's
audit to itself.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="checkpoint-wear")

ONLY_PROCESS = {f"{name}_Disabled": True for name in (
    "SystemInformation", "Baseline", "SBoM", "LocalUsers", "Firewall", "ListeningPorts",
    "Heartbeat", "Statistics", "Login", "NetworkActivity")}
LOADS = ("idle", "same command", "distinct commands")


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/PID/io")


def paced(argv_of: object, rate: int, seconds: float) -> int:
    """Runs argv_of(i) `rate` times a second for `seconds`; returns how many ran."""
    count = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        while count < due:
            subprocess.run(argv_of(count), stdout=subprocess.DEVNULL, check=True)  # type: ignore[operator]
            count += 1
        time.sleep(0.002)
    return count


def phase(base: Path, checkpoint_s: int, load: str, seconds: float, settle: float
          ) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=base) as tmp, \
            tempfile.TemporaryDirectory(dir="/dev/shm") as runtime:
        data, config = Path(tmp) / "data", Path(tmp) / "config.json"
        config.write_text(json.dumps({**ONLY_PROCESS, "Outbox_CheckpointSeconds": checkpoint_s}))
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data),
                                  "--runtime-dir", runtime, "--config", str(config),
                                  "--log-level", "warning"],
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (data / "status.json").exists():
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(settle)
            before = write_bytes(agent.pid)
            started = time.monotonic()
            tag = uuid.uuid4().hex[:8]
            if load == "idle":
                time.sleep(seconds)
                execs = 0
            elif load == "same command":
                execs = paced(lambda _i: ["/bin/true"], 100, seconds)
            else:
                execs = paced(lambda i: ["/bin/echo", f"wear-{tag}-{i:08d}"], 100, seconds)
            elapsed = time.monotonic() - started
            written = write_bytes(agent.pid) - before
            status = json.loads((data / "status.json").read_text())
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.communicate(timeout=60)
        assert agent.returncode == 0
    ckpt = status.get("checkpoint", {})
    collected = status["collectors"]["Process"]["counters"].get("collected", 0)
    return {"bytes_per_h": written * 3600 / elapsed, "execs": execs, "collected": collected,
            "checkpoint_writes": ckpt.get("writes", 0), "checkpoint_bytes": ckpt.get("bytes", 0),
            "seconds": elapsed}


def test_checkpoint_wear(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> None:
    quick = bool(request.config.getoption("benchmark_disable"))
    seconds = 3.0 if quick else float(os.environ.get("AGENT_BENCH_WEAR_S", "40"))
    settle = 1.0 if quick else 5.0
    base = Path(os.environ.get("AGENT_BENCH_DIR", "/var/tmp"))
    figures: dict[str, dict[str, float]] = {}

    def run() -> None:
        for checkpoint_s, load in itertools.product((10, 0), LOADS):
            figures[f"{load}, CheckpointSeconds={checkpoint_s}"] = phase(
                base, checkpoint_s, load, seconds, settle)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\n| load ({seconds:.0f} s each) | Outbox_CheckpointSeconds | written per hour "
          "| checkpoint files written (bytes) | exec events seen (all processes) |"
          "\n|---|---:|---:|---:|---:|")
    for name, f in figures.items():
        load, _, setting = name.partition(", CheckpointSeconds=")
        print(f"| {load} | {setting} | {f['bytes_per_h'] / 1e6:.2f} MB "
              f"| {f['checkpoint_writes']:.0f} ({f['checkpoint_bytes'] / 1e3:.0f} kB) "
              f"| {f['collected']:.0f} |")
    # "Idle" is the workload's: other processes' execs on the machine are seen too (last
    # column), and a checkpoint follows each change.
    assert figures["idle, CheckpointSeconds=0"]["checkpoint_writes"] == 0
    for load in LOADS[1:]:
        assert figures[f"{load}, CheckpointSeconds=10"]["execs"] > 0


def exec_event(i: int, distinct: bool, ts: int) -> dict[str, object]:
    """An exec event of the size the audit source writes (about 300 bytes)."""
    word = f"wear-{i:08d}" if distinct else "status"
    return {"t": "exec", "src": "audit", "ts": ts, "pid": 4000 + i % 30000, "ppid": 1200,
            "uid": 0, "auid": 1000, "ses": 3, "tty": "pts0", "ok": True,
            "exe": "/usr/bin/systemctl", "cwd": "/root",
            "argv": ["/usr/bin/systemctl", word, "--no-pager", "--quiet"]}


def simulated_hour(base: Path, load: str, hours: float, checkpoint_s: int) -> dict[str, float]:
    """The Process collector's lane (Medium, 120 minutes) fed 100 exec events a second of
    simulated time through its aggregator (cache 256), checkpoints due once a simulated
    second: the bytes the checkpoint files and the outbox take, free of the machine's other
    processes (which the live phases above also see)."""
    import msgpack

    from agent.config import Frequency
    from agent.envelope import Identity
    from agent.native.aggregate import Aggregator
    from agent.outbox import Outbox
    from agent.runtime.checkpoint import Checkpoints
    from agent.runtime.lanes import PriorityLane

    with tempfile.TemporaryDirectory(dir=base) as tmp, \
            Outbox(Path(tmp), 4 << 30, 86400) as outbox:
        lane = PriorityLane(Frequency.MEDIUM, outbox, Identity("a", "0", "d", "m"), 245760,
                            7200.0)
        lane.collectors.append("Process")
        agg = Aggregator("process", cache_size=256, accept=("exec",))
        checkpoints = Checkpoints(Path(tmp), outbox, lambda _lane: {"Process": agg})
        if checkpoint_s:
            lane.write_ahead = checkpoints.write
        i = 0
        for second in range(int(hours * 3600)):
            if load != "idle":
                events = []
                for _ in range(100):
                    events.append(exec_event(i, load == "distinct commands", second * 1000))
                    i += 1
                lane.spill(agg.add(msgpack.packb(events), lane.sink))
            if checkpoint_s:
                checkpoints.due(lane, float(second), float(checkpoint_s))
        return {"checkpoint_bytes_per_h": checkpoints.counters.bytes / hours,
                "checkpoint_writes_per_h": checkpoints.counters.writes / hours,
                "outbox_bytes_per_h": outbox.total_bytes() / hours}


def test_checkpoint_bytes_per_simulated_hour(benchmark: BenchmarkFixture,
                                             request: pytest.FixtureRequest) -> None:
    quick = bool(request.config.getoption("benchmark_disable"))
    hours = 0.02 if quick else 1.0
    base = Path(os.environ.get("AGENT_BENCH_DIR", "/var/tmp"))
    figures: dict[str, dict[str, float]] = {}

    def run() -> None:
        for load in LOADS:
            figures[f"{load}, 10"] = simulated_hour(base, load, hours, 10)
        figures["distinct commands, 60"] = simulated_hour(base, "distinct commands", hours, 60)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\n| 100 exec/s ({hours * 3600:.0f} simulated s) | Outbox_CheckpointSeconds "
          "| checkpoint writes per hour | checkpoint bytes per hour | outbox bytes per hour "
          "|\n|---|---:|---:|---:|---:|")
    for name, f in figures.items():
        load, _, period = name.partition(", ")
        print(f"| {load} | {period} | {f['checkpoint_writes_per_h']:.0f} "
              f"| {f['checkpoint_bytes_per_h'] / 1e6:.2f} MB | {f['outbox_bytes_per_h'] / 1e6:.2f} MB |")
    assert figures["idle, 10"]["checkpoint_writes_per_h"] == 0
    # One write per period at most while the lane changes (plus one per spill, written ahead).
    assert figures["same command, 10"]["checkpoint_writes_per_h"] <= 3600 / (10 - 1.5) + 1
