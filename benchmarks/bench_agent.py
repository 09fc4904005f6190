"""The whole agent (docs/architecture.md, Budgets: "the whole agent: RSS, CPU per 1,000 events,
idle wake-ups"; target under 30 MB RSS and under 1 % of one core at 100 exec/s).

`micro-agent run` on its embedded default (every collector on, no IoT Hub) in a child process;
after it settles: idle for a while (CPU seconds, wake-ups as voluntary context switches, from
/proc/PID), then 100 execs per second of /bin/true for a while (CPU seconds per 1,000 exec
events), and its RSS and peak RSS. With --benchmark-disable the phases are short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="agent")

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            out[key] = int(value.split()[0])
    return out


def paced_execs(rate: int, seconds: float) -> int:
    """/bin/true at `rate` per second for `seconds`; returns how many ran."""
    count = 0
    start = time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        while count < due:
            subprocess.run(["/bin/true"], check=True)
            count += 1
        time.sleep(0.002)
    return count


def test_whole_agent(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> None:
    quick = bool(request.config.getoption("benchmark_disable"))
    settle, idle, busy = (3.0, 3.0, 3.0) if quick else (15.0, 60.0, 30.0)
    figures: dict[str, float] = {}

    def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            config = Path(tmp) / "config.json"
            config.write_text("{}")
            agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data),
                                      "--config", str(config), "--log-level", "warning"],
                                     stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 60
                while not (data / "status.json").exists():
                    assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                time.sleep(settle)
                cpu0, st0 = proc_cpu_s(agent.pid), proc_status(agent.pid)
                time.sleep(idle)
                cpu1, st1 = proc_cpu_s(agent.pid), proc_status(agent.pid)
                execs = paced_execs(100, busy)
                time.sleep(1.5)
                cpu2, st2 = proc_cpu_s(agent.pid), proc_status(agent.pid)
                status = json.loads((data / "status.json").read_text())
                collected = status["collectors"]["Process"]["counters"].get("collected", 0)
                figures.update(
                    idle_cpu_pct=100 * (cpu1 - cpu0) / idle,
                    idle_wakeups_per_min=60 * (st1["voluntary_ctxt_switches"] - st0["voluntary_ctxt_switches"]) / idle,
                    busy_cpu_pct=100 * (cpu2 - cpu1) / (busy + 1.5),
                    cpu_ms_per_1000_execs=1e6 * (cpu2 - cpu1) / max(1, execs),
                    execs=execs,
                    process_events=collected,
                    rss_mb=st2["VmRSS"] / 1024,
                    peak_rss_mb=st2["VmHWM"] / 1024,
                )
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.communicate(timeout=60)
            assert agent.returncode == 0

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    assert figures["execs"] > 0 and figures["process_events"] >= figures["execs"] * 0.9
    print("\n| measure | value | budget |\n|---|---:|---|")
    print(f"| RSS / peak RSS, every collector on | {figures['rss_mb']:.1f} / {figures['peak_rss_mb']:.1f} MB | < 30 MB |")
    print(f"| idle CPU | {figures['idle_cpu_pct']:.2f} % of one core | |")
    print(f"| idle wake-ups | {figures['idle_wakeups_per_min']:.0f} per minute | |")
    print(f"| CPU at 100 exec/s ({figures['execs']} execs) | {figures['busy_cpu_pct']:.2f} % of one core | < 1 % |")
    print(f"| CPU per 1,000 exec events | {figures['cpu_ms_per_1000_execs']:.0f} ms | |")
