"""Audit log text -> grouped, interpreted events: the C core beside its peers
(docs/architecture.md, Budgets).

Same input (conftest.py: the recorded device log, or $AGENT_CORPUS_DIR's, replicated to
~300,000 records), same run, one CPU:

- core: agent.native.AuditParser fed in 1 MiB chunks, flushed; output is msgpack batches.
- laurel: Debian's /usr/sbin/laurel reading the log on stdin, as auditd would feed it, and
  writing its JSON lines log to a temporary directory; timed end to end (start-up included).
  Enrichments that read the live system (/proc, container, script, environment) are off;
  `translate.universal` is on (arch, syscall and sockaddr names: what the core interprets).
- auparse: Debian's /usr/bin/python3 with python3-audit in a subprocess, walking every event,
  record and field of the file and calling interpret_field on each; timed end to end.
- reference: the pure-Python parser (tests/oracle/audit_reference.py) in this process.

Each runs `rounds` times (fewer for the reference if one round would take over a minute);
records/second use the median round. With --benchmark-disable each runs once, only to check
that it works (CI runs that mode with a small AGENT_BENCH_RECORDS).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import pytest
from conftest import skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="audit-parse")

ROUNDS = 3
REFERENCE_MAX_ROUND_S = 60.0
CHUNK = 1 << 20

LAUREL = "/usr/sbin/laurel"
DEBIAN_PYTHON = "/usr/bin/python3"

T = TypeVar("T")


class BenchInput(Protocol):
    """What conftest.audit_bench_input provides."""

    @property
    def path(self) -> Path: ...
    @property
    def source(self) -> Path: ...
    @property
    def copies(self) -> int: ...
    @property
    def records(self) -> int: ...
    @property
    def events(self) -> int: ...
    @property
    def login_records(self) -> int: ...
    @property
    def size(self) -> int: ...


class RecordPeer(Protocol):
    """conftest.record_peer: leaves a peer's figures for the session's table."""

    def __call__(
        self,
        peer: str,
        records: int,
        seconds: Sequence[float],
        cpu_seconds: Sequence[float],
        timed: bool,
        notes: Sequence[str] = (),
    ) -> None: ...


def _self_cpu() -> float:
    return time.process_time()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    benchmark: BenchmarkFixture,
    target: Callable[[], T],
    *,
    rounds: int,
    cpu: Callable[[], float],
    setup: Callable[[], None] | None = None,
) -> tuple[T, list[float], list[float]]:
    """benchmark.pedantic over `target`, keeping each round's wall and CPU time ourselves too
    (pytest-benchmark keeps no figures under --benchmark-disable)."""
    walls: list[float] = []
    cpus: list[float] = []
    results: list[T] = []

    def timed() -> T:
        cpu0 = cpu()
        wall0 = time.perf_counter()
        result = target()
        walls.append(time.perf_counter() - wall0)
        cpus.append(cpu() - cpu0)
        results.append(result)
        return result

    def prepare() -> None:
        if setup is not None:
            setup()

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        timed, setup=prepare, rounds=rounds, iterations=1, warmup_rounds=0
    )
    assert results, "the benchmark did not run its target"
    return results[-1], walls, cpus


def _finish(
    benchmark: BenchmarkFixture,
    record_peer: RecordPeer,
    peer: str,
    bench_input: BenchInput,
    walls: list[float],
    cpus: list[float],
    notes: Sequence[str] = (),
    **extra: object,
) -> None:
    rate = bench_input.records / statistics.median(walls)
    benchmark.extra_info.update(
        {
            "peer": peer,
            "records": bench_input.records,
            "events": bench_input.events,
            "input_bytes": bench_input.size,
            "records_per_s": round(rate),
            "round_seconds": [round(w, 4) for w in walls],
            "cpu_seconds": [round(c, 4) for c in cpus],
            "cpu": sorted(os.sched_getaffinity(0)),
            **extra,
        }
    )
    record_peer(peer, bench_input.records, walls, cpus, benchmark.enabled, notes)


# ---------------------------------------------------------------------------------------------
# (a) the C core


def test_core(
    benchmark: BenchmarkFixture, audit_bench_input: BenchInput, record_peer: RecordPeer
) -> None:
    from agent.native import AuditParser, CoreStats

    path = audit_bench_input.path

    def run() -> tuple[CoreStats, int, int, int]:
        parser = AuditParser()
        out_bytes = 0
        header_events = 0
        with path.open("rb") as log:
            while True:
                chunk = log.read(CHUNK)
                if not chunk:
                    break
                for batch in parser.feed(chunk):
                    out_bytes += len(batch)
                    header_events += int.from_bytes(batch[1:5], "big")
        for batch in parser.flush():
            out_bytes += len(batch)
            header_events += int.from_bytes(batch[1:5], "big")
        return parser.stats(), out_bytes, header_events, parser.sink.stats().batches

    (stats, out_bytes, header_events, batch_count), walls, cpus = measure(
        benchmark, run, rounds=ROUNDS, cpu=_self_cpu
    )

    assert stats.records == audit_bench_input.records
    assert stats.malformed == 0
    assert stats.events == audit_bench_input.events
    assert header_events == stats.events, "batch headers (array32 counts) disagree with stats"
    assert stats.bytes == audit_bench_input.size
    assert stats.duplicates == 0, "the replicated input repeats serials"
    _finish(
        benchmark,
        record_peer,
        "core",
        audit_bench_input,
        walls,
        cpus,
        [f"{out_bytes / 1e6:.1f} MB msgpack in {batch_count} batches"],
        msgpack_bytes=out_bytes,
        batches=batch_count,
        timeouts=stats.timeouts,
        forced=stats.forced,
        gaps=stats.gaps,
    )


# ---------------------------------------------------------------------------------------------
# (b) laurel

LAUREL_CONFIG = """\
# Written by benchmarks/bench_audit.py: laurel reading a log file on stdin.
directory = "{directory}"
statusreport-period = 0

[auditlog]
file = "audit.log"
size = 1099511627776
generations = 1

[transform]
execve-argv = [ "array" ]

[translate]
universal = true
user-db = false

[enrich]
pid = false
execve-env = []
container = false
script = false
"""


def _laurel_threads(command: list[str], log: Path) -> int:
    """The most threads laurel ran at once over this input (an untimed run)."""
    most = 0
    with log.open("rb") as stdin:
        proc = subprocess.Popen(
            command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while proc.poll() is None:
                try:
                    most = max(most, len(os.listdir(f"/proc/{proc.pid}/task")))
                except OSError:
                    pass
                time.sleep(0.002)
        finally:
            proc.wait()
    return most


def test_laurel(
    benchmark: BenchmarkFixture,
    audit_bench_input: BenchInput,
    record_peer: RecordPeer,
    tmp_path: Path,
) -> None:
    if not os.access(LAUREL, os.X_OK):
        skip_unless_ci(f"{LAUREL} is not installed (Debian package laurel)")
    out_dir = tmp_path / "laurel"
    out_dir.mkdir()
    config = tmp_path / "laurel.toml"
    config.write_text(LAUREL_CONFIG.format(directory=out_dir))
    command = [LAUREL, "--config", str(config)]
    dry = subprocess.run(command + ["--dry-run"], capture_output=True, text=True, check=False)
    assert dry.returncode == 0, f"laurel rejected its configuration: {dry.stderr}"
    out_log = out_dir / "audit.log"

    def clean() -> None:
        for item in out_dir.iterdir():
            item.unlink()

    def run() -> str:
        with audit_bench_input.path.open("rb") as stdin:
            proc = subprocess.run(
                command,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, f"laurel exited with {proc.returncode}: {stderr}"
        return stderr

    stderr, walls, cpus = measure(benchmark, run, rounds=ROUNDS, cpu=_children_cpu, setup=clean)

    with out_log.open("rb") as output:
        lines = sum(1 for _ in output)
    assert lines > 0, f"laurel wrote nothing: {stderr}"
    first = json.loads(out_log.read_bytes().split(b"\n", 1)[0])
    assert "ID" in first
    threads = _laurel_threads(command, audit_bench_input.path)
    version = subprocess.run(
        [LAUREL, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    note = (
        f"{version}: {lines:,} JSON lines, {out_log.stat().st_size / 1e6:.1f} MB; "
        f"{threads} thread(s) seen while it ran"
    )
    _finish(
        benchmark,
        record_peer,
        "laurel",
        audit_bench_input,
        walls,
        cpus,
        [note],
        output_lines=lines,
        threads=threads,
        version=version,
    )


# ---------------------------------------------------------------------------------------------
# (c) auparse

AUPARSE_SCRIPT = r"""
import json
import sys
import time

import auparse

start = time.perf_counter()
parser = auparse.AuParser(auparse.AUSOURCE_FILE, sys.argv[1])
events = records = fields = 0
while parser.parse_next_event():
    events += 1
    while True:
        records += 1
        if parser.first_field():
            while True:
                fields += 1
                parser.get_field_name()
                parser.interpret_field()
                if not parser.next_field():
                    break
        if not parser.next_record():
            break
print(json.dumps({"events": events, "records": records, "fields": fields,
                  "seconds": time.perf_counter() - start}))
"""


def test_auparse(
    benchmark: BenchmarkFixture, audit_bench_input: BenchInput, record_peer: RecordPeer
) -> None:
    # -I: Debian's interpreter must not see this environment's PYTHONPATH or user site.
    command = [DEBIAN_PYTHON, "-I", "-c", AUPARSE_SCRIPT, str(audit_bench_input.path)]
    probe = (
        subprocess.run(
            [DEBIAN_PYTHON, "-I", "-c", "import auparse"], capture_output=True, check=False
        )
        if os.access(DEBIAN_PYTHON, os.X_OK)
        else None
    )
    if probe is None or probe.returncode != 0:
        skip_unless_ci(f"{DEBIAN_PYTHON} cannot import auparse (Debian package python3-audit)")

    def run() -> dict[str, float]:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"auparse script failed: {proc.stderr}"
        counts: dict[str, float] = json.loads(proc.stdout)
        return counts

    counts, walls, cpus = measure(benchmark, run, rounds=ROUNDS, cpu=_children_cpu)

    assert counts["records"] == audit_bench_input.records
    # auparse makes a LOGIN record an event of its own, apart from the SYSCALL and PROCTITLE
    # records of the same serial; every other event it groups as the core does.
    assert counts["events"] == audit_bench_input.events + audit_bench_input.login_records
    startup = max(statistics.median(walls) - counts["seconds"], 0.0)
    note = f"{int(counts['fields']):,} fields interpreted; start-up ~{startup:.2f} s per round"
    _finish(
        benchmark,
        record_peer,
        "auparse",
        audit_bench_input,
        walls,
        cpus,
        [note],
        auparse_events=int(counts["events"]),
        fields=int(counts["fields"]),
        inner_seconds=round(counts["seconds"], 4),
    )


# ---------------------------------------------------------------------------------------------
# (d) the pure-Python reference


def test_reference(
    benchmark: BenchmarkFixture, audit_bench_input: BenchInput, record_peer: RecordPeer
) -> None:
    import oracle.audit_reference as reference

    def parse(path: Path) -> int:
        parser = reference.ReferenceAuditParser()
        events = 0
        with path.open("rb") as log:
            while True:
                chunk = log.read(CHUNK)
                if not chunk:
                    break
                events += len(parser.feed(chunk))
        events += len(parser.flush())
        return events

    rounds = ROUNDS
    notes: list[str] = []
    if benchmark.enabled:
        # One untimed pass over a single copy tells how long a round would take.
        start = time.perf_counter()
        parse(audit_bench_input.source)
        estimate = (time.perf_counter() - start) * audit_bench_input.copies
        if estimate > REFERENCE_MAX_ROUND_S:
            rounds = 1
            notes.append(f"one round only (estimated {estimate:.0f} s per round)")

    events, walls, cpus = measure(
        benchmark, lambda: parse(audit_bench_input.path), rounds=rounds, cpu=_self_cpu
    )

    assert events == audit_bench_input.events
    _finish(benchmark, record_peer, "reference", audit_bench_input, walls, cpus, notes)
