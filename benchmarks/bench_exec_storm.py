"""Exec storm: the live audit source (agent.native.audit_netlink) under 1,000 and 5,000
execs per second for 10 s (1 s under --benchmark-disable).

A small C spawner (compiled here with gcc) posix_spawns `/bin/true TAG-n` at a fixed pace
(absolute deadlines, so a late spawn does not slow the rest; when the machine cannot keep the
pace it spawns as fast as it can and the achieved rate is reported) and reaps its children.
This process drains the source meanwhile: select on fileno(), drain(), expire(), seal() and
poll_status() once a second, keeping the batches as bytes; they are decoded only after the
storm, so the CPU figure (getrusage of this process over the drain loop, user + system) is
the source's and the parser's work, not the benchmark's. Figures per rate: execs run, exec
events delivered (matched by their unique argv), loss the source reported (kernel `lost`
delta, ENOBUFS, serial gaps), CPU seconds and CPU per 1,000 events (the source handles every
exec on the machine, so events >= delivered). Needs root and a kernel with audit.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from conftest import skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="exec-storm")

SECONDS = 10
QUICK_SECONDS = 1

SPAWNER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

/* spawner RATE SECONDS TAG: posix_spawn /bin/true TAG-n at RATE per second for SECONDS. */
int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    long rate = atol(argv[1]), seconds = atol(argv[2]);
    long total = rate * seconds, started = 0, running = 0;
    struct timespec t0, next, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char arg[128];
    for (long i = 0; i < total; i++) {
        long long ns = (long long)i * 1000000000LL / rate;
        next.tv_sec = t0.tv_sec + (time_t)(ns / 1000000000LL);
        next.tv_nsec = t0.tv_nsec + (long)(ns % 1000000000LL);
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
        snprintf(arg, sizeof arg, "%s-%ld", argv[3], i);
        char *child_argv[] = {"/bin/true", arg, NULL};
        pid_t pid;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, child_argv, environ) == 0) {
            started++;
            running++;
        }
        while (running > 0 && waitpid(-1, NULL, WNOHANG) > 0)
            running--;
    }
    while (running > 0 && waitpid(-1, NULL, 0) > 0)
        running--;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double took = (double)(now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%ld %.3f\n", started, took);
    return 0;
}
"""


@pytest.fixture(scope="module")
def spawner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        skip_unless_ci("the exec storm needs root (the audit source owns or reads kernel audit)")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        skip_unless_ci("no C compiler for the spawner")
    folder = tmp_path_factory.mktemp("spawner")
    source = folder / "spawner.c"
    source.write_text(SPAWNER_C)
    binary = folder / "spawner"
    subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


@dataclass
class StormResult:
    rate: int
    seconds: float
    execs: int
    achieved_rate: float
    delivered: int
    events: int
    kernel_lost: int
    enobufs: int
    gaps: int
    ownership_lost: int
    cpu_seconds: float
    wall_seconds: float
    mode: str

    @property
    def cpu_per_1000_events(self) -> float:
        return 1000 * self.cpu_seconds / self.events if self.events else 0.0


_RESULTS: list[StormResult] = []


@pytest.fixture(scope="module", autouse=True)
def table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if not _RESULTS or reporter is None:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            _write_table(reporter)
    else:
        _write_table(reporter)


def _write_table(reporter: pytest.TerminalReporter) -> None:
    reporter.write_sep("=", "exec storm: the audit source draining while /bin/true runs")
    reporter.write_line(
        "| target/s | s | execs | achieved/s | delivered | loss (lost, enobufs, gaps, dropped) | "
        "events | CPU s | CPU % | CPU ms / 1000 ev | mode |"
    )
    reporter.write_line("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for r in _RESULTS:
        reporter.write_line(
            f"| {r.rate} | {r.seconds:.1f} | {r.execs} | {r.achieved_rate:.0f} | {r.delivered} | "
            f"{r.kernel_lost}, {r.enobufs}, {r.gaps}, {r.ownership_lost} | {r.events} | {r.cpu_seconds:.3f} | "
            f"{100 * r.cpu_seconds / r.wall_seconds:.1f} | {r.cpu_per_1000_events * 1000:.1f} | "
            f"{r.mode} |"
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def storm(spawner: Path, rate: int, seconds: int) -> StormResult:
    from agent.native.audit_netlink import AuditNetlink
    from agent.native.sink import EventSink, pump

    tag = f"storm-{uuid.uuid4().hex[:10]}"
    batches: list[bytes] = []
    sink = EventSink()
    with AuditNetlink() as source:
        assert source.mode in ("owner", "multicast"), source.state
        state = source.state
        fd = source.fileno()
        cpu0, wall0 = _cpu(), time.monotonic()
        child = subprocess.Popen(
            [str(spawner), str(rate), str(seconds), tag], stdout=subprocess.PIPE, text=True
        )
        next_poll = time.monotonic() + 1
        quiet_until = None
        while True:
            ready, _, _ = select.select([fd], [], [], 0.1)
            got = pump(source.drain, sink, batches.extend)
            now = time.monotonic()
            now_ms = time.time_ns() // 1_000_000
            got += pump(lambda s, t=now_ms: source.expire(s, t), sink, batches.extend)
            if now >= next_poll:
                source.poll_status()
                next_poll = now + 1
            if child.poll() is not None:
                # The storm is over: drain until the stream has been quiet for 0.5 s.
                if ready or got or quiet_until is None:
                    quiet_until = now + 0.5
                elif now >= quiet_until:
                    break
        batches += sink.seal()
        source.poll_status()
        cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
        pump(source.finish, sink, batches.extend)
        stats = source.stats()
    out = child.stdout.read().split() if child.stdout else []
    execs, took = int(out[0]), float(out[1])
    delivered = 0
    events = 0
    for batch in batches:
        for event in msgpack.unpackb(batch, raw=False):
            events += 1
            argv = event.get("argv") if event.get("t") == "exec" else None
            if argv and len(argv) == 2 and isinstance(argv[1], str) and argv[1].startswith(tag):
                delivered += 1
    return StormResult(
        rate=rate,
        seconds=took,
        execs=execs,
        achieved_rate=execs / took if took else 0.0,
        delivered=delivered,
        events=events,
        kernel_lost=stats.kernel_lost_delta,
        enobufs=stats.enobufs,
        gaps=stats.parser.gaps,
        ownership_lost=stats.ownership_lost,
        cpu_seconds=cpu,
        wall_seconds=wall,
        mode=state,
    )


@pytest.mark.parametrize("rate", [1000, 5000])
def test_exec_storm(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, spawner: Path, rate: int
) -> None:
    seconds = QUICK_SECONDS if request.config.getoption("benchmark_disable") else SECONDS
    results: list[StormResult] = []

    def run() -> None:
        results.append(storm(spawner, rate, seconds))

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)  # type: ignore[no-untyped-call]
    result = results[-1]
    _RESULTS.append(result)
    benchmark.extra_info.update(
        {
            "target_rate": rate,
            "execs": result.execs,
            "achieved_rate": round(result.achieved_rate),
            "delivered": result.delivered,
            "events": result.events,
            "kernel_lost_delta": result.kernel_lost,
            "enobufs": result.enobufs,
            "gaps": result.gaps,
            "ownership_lost": result.ownership_lost,
            "cpu_seconds": round(result.cpu_seconds, 3),
            "cpu_ms_per_1000_events": round(result.cpu_per_1000_events * 1000, 2),
            "mode": result.mode,
        }
    )
    # Same work check: every exec the spawner ran is delivered, or the shortfall is reported
    # as loss.
    assert result.execs > 0
    assert result.delivered <= result.execs
    loss = result.kernel_lost + result.enobufs + result.gaps + result.ownership_lost
    assert result.delivered == result.execs or loss > 0, (
        f"{result.execs - result.delivered} execs missing and no loss reported"
    )
