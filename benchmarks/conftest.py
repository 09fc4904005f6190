"""Fixtures of the side-by-side benchmarks: the shared input, one-CPU pinning, the results table.

The audit input is a real device log, the repository's recorded
tests/fixtures/audit/device-raw.log, or device-raw.log of the larger corpus that
AGENT_CORPUS_DIR names when it is set, replicated until it holds about AGENT_BENCH_RECORDS
records (default 300,000); each copy
shifts every serial past the previous copy's and every timestamp past its end, so serials stay
unique and increasing and the content is otherwise the same. CI's quick mode
(`--benchmark-disable`) sets AGENT_BENCH_RECORDS to a small value.

Every peer runs pinned to one CPU (the pytest process and, by inheritance, its children), so a
multi-threaded peer is measured per core like the single-threaded ones.

At the end of the session the peers' records/second and the core's ratio to each are printed
and, for a timed run, written to .benchmarks/audit-parse.md (gitignored: results are not
committed).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
FIXTURE_LOG = REPO / "tests" / "fixtures" / "audit" / "device-raw.log"
RESULTS_MD = REPO / ".benchmarks" / "audit-parse.md"
DEFAULT_RECORDS = 300_000

# The peers in table order, with the budget of the core against each (docs/architecture.md, core >= N x).
PEERS: dict[str, float | None] = {
    "core": None,
    "laurel": 10.0,
    "auparse": 3.0,
    "reference": None,
}

_STAMP = re.compile(rb"msg=audit\((\d+)\.(\d+):(\d+)\):")


# ---------------------------------------------------------------------------------------------
# the input


@dataclass(frozen=True)
class AuditBenchInput:
    """The replicated log and what a correct parser must find in it."""

    path: Path
    source: Path
    copies: int
    records: int  # lines that are audit records
    events: int  # distinct (node, serial) keys
    login_records: int  # LOGIN records (auparse makes each its own event)
    size: int  # bytes

    def describe(self) -> str:
        return (
            f"{self.source.name} x {self.copies}: {self.records:,} records, "
            f"{self.events:,} events, {self.size / 1e6:.1f} MB"
        )


def device_log() -> Path:
    """device-raw.log of $AGENT_CORPUS_DIR when it is set, else the recorded fixture."""
    configured = os.environ.get("AGENT_CORPUS_DIR")
    if not configured:
        return FIXTURE_LOG
    log = Path(configured) / "device-raw.log"
    if not log.is_file():
        raise pytest.UsageError(f"AGENT_CORPUS_DIR={configured!r} holds no device-raw.log")
    return log


def bench_records() -> int:
    value = os.environ.get("AGENT_BENCH_RECORDS", str(DEFAULT_RECORDS))
    try:
        records = int(value)
    except ValueError:
        raise pytest.UsageError(f"AGENT_BENCH_RECORDS={value!r} is not an integer") from None
    if records < 1:
        raise pytest.UsageError(f"AGENT_BENCH_RECORDS={value!r} must be >= 1")
    return records


def _node_of(prefix: bytes) -> bytes | None:
    node = None
    for token in prefix.split():
        if token.startswith(b"node="):
            node = token[5:]
    return node


def replicate_audit_log(source: Path, target_records: int, out: Path) -> AuditBenchInput:
    """Write whole copies of `source` to `out`, about `target_records` records in all.

    Copy k adds k * (serial span) to every serial and k * (time span + 10 s) to every
    timestamp's seconds: serials stay unique and increasing across copies, the kernel's and
    auditd's own (DAEMON_*) sequences each continuing from its end, so a log without serial
    gaps stays without; timestamps increase, and an event left open at the end of a copy
    times out before the next copy's records come, as it would complete at the end of the
    original file.
    """
    lines = source.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed: list[tuple[bytes, int, bytes, int, bytes]] = []
    verbatim: list[tuple[int, bytes]] = []
    keys: set[tuple[bytes | None, int]] = set()
    daemons: list[bool] = []
    logins = 0
    for index, line in enumerate(lines):
        match = _STAMP.search(line)
        if match is None:
            verbatim.append((index, line))
            continue
        prefix = line[: match.start()]
        serial = int(match.group(3))
        parsed.append((prefix, int(match.group(1)), match.group(2), serial, line[match.end() :]))
        keys.add((_node_of(prefix.split(b"type=", 1)[0]), serial))
        record_type = prefix.rsplit(b"type=", 1)[-1].strip()
        daemons.append(record_type.startswith(b"DAEMON_"))
        if record_type == b"LOGIN":
            logins += 1
    if not parsed:
        raise ValueError(f"{source} holds no audit record")
    per_copy = len(parsed)
    copies = max(1, round(target_records / per_copy))
    seconds = [p[1] for p in parsed]
    time_shift = max(seconds) - min(seconds) + 10
    # auditd numbers its own DAEMON_* records apart from the kernel's serials: each sequence
    # continues from its own end in the next copy.
    kernel = [p[3] for p, daemon in zip(parsed, daemons) if not daemon] or [0]
    own = [p[3] for p, daemon in zip(parsed, daemons) if daemon] or [0]
    kernel_shift = max(kernel) - min(kernel) + 1
    daemon_shift = max(own) - min(own) + 1

    chunks: list[bytes] = []
    for copy in range(copies):
        dt = copy * time_shift
        shifts = (copy * kernel_shift, copy * daemon_shift)
        body = [
            b"%smsg=audit(%d.%s:%d):%s" % (prefix, sec + dt, frac, serial + shifts[daemon], rest)
            for (prefix, sec, frac, serial, rest), daemon in zip(parsed, daemons)
        ]
        # Lines that are not records keep their place relative to the records around them.
        for index, line in verbatim:
            body.insert(index, line)
        chunks.append(b"\n".join(body) + b"\n")
    data = b"".join(chunks)
    out.write_bytes(data)
    return AuditBenchInput(
        path=out,
        source=source,
        copies=copies,
        records=per_copy * copies,
        events=len(keys) * copies,
        login_records=logins * copies,
        size=len(data),
    )


def skip_unless_ci(reason: str) -> None:
    """A peer or a privilege is missing: skip on a developer's machine, but fail in CI, where
    scripts/test installs every peer and runs as root (a skip there would hide a benchmark)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI lacks a prerequisite: {reason}")
    pytest.skip(reason)


def measure(benchmark: Any, target: Callable[[], T], rounds: int) -> T:
    """target() timed by pytest-benchmark in `rounds` rounds (one under
    --benchmark-disable), no warm-up; the last round's result."""
    results: list[T] = []

    def timed() -> None:
        results.append(target())

    benchmark.pedantic(timed, rounds=rounds if benchmark.enabled else 1, iterations=1,
                       warmup_rounds=0)
    return results[-1]


@pytest.fixture(scope="session")
def audit_bench_input(tmp_path_factory: pytest.TempPathFactory) -> AuditBenchInput:
    out = tmp_path_factory.mktemp("audit-bench") / "device-replicated.log"
    return replicate_audit_log(device_log(), bench_records(), out)


# ---------------------------------------------------------------------------------------------
# one CPU


@pytest.fixture(scope="session")
def bench_cpu() -> Iterator[int]:
    """Pin this process (and the peers it starts) to one CPU for the session."""
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class PeerResult:
    peer: str
    records: int
    seconds: list[float]  # wall time of each round
    cpu_seconds: list[float]  # user + system time of each round (the peer's process)
    timed: bool  # False under --benchmark-disable: one untimed-by-pytest run
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.records / self.median if self.median > 0 else float("inf")

    @property
    def cpu_share(self) -> float:
        wall = sum(self.seconds)
        return sum(self.cpu_seconds) / wall if wall > 0 else 0.0


_RESULTS = pytest.StashKey[dict[str, PeerResult]]()
_INPUT = pytest.StashKey[AuditBenchInput]()
_CPU = pytest.StashKey[int]()


class PeerRecorder:
    """Called by each peer's benchmark with its figures, for the session's table."""

    def __init__(self, config: pytest.Config) -> None:
        self._results = config.stash.setdefault(_RESULTS, {})

    def __call__(
        self,
        peer: str,
        records: int,
        seconds: Sequence[float],
        cpu_seconds: Sequence[float],
        timed: bool,
        notes: Sequence[str] = (),
    ) -> None:
        self._results[peer] = PeerResult(
            peer, records, list(seconds), list(cpu_seconds), timed, list(notes)
        )


@pytest.fixture
def record_peer(
    request: pytest.FixtureRequest, audit_bench_input: AuditBenchInput, bench_cpu: int
) -> PeerRecorder:
    config = request.config
    config.stash[_INPUT] = audit_bench_input
    config.stash[_CPU] = bench_cpu
    return PeerRecorder(config)


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def results_table(
    results: dict[str, PeerResult], bench_input: AuditBenchInput | None, cpu: int | None
) -> list[str]:
    lines: list[str] = []
    core = results.get("core")
    header = "| peer | records/s | median s | rounds | cpu/wall | core / peer | budget |"
    lines.append(header)
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    order = [p for p in PEERS if p in results] + [p for p in results if p not in PEERS]
    for name in order:
        result = results[name]
        ratio = ""
        budget = ""
        if core is not None:
            ratio = f"{core.rate / result.rate:.2f}x"
            target = PEERS.get(name)
            if target is not None:
                met = core.rate / result.rate >= target
                budget = f">= {target:g}x: {'met' if met else 'NOT met'}"
        lines.append(
            f"| {name} | {_fmt_rate(result.rate)} | {result.median:.3f} | "
            f"{len(result.seconds)} | {result.cpu_share:.2f} | {ratio} | {budget} |"
        )
    notes = [f"- {name}: {note}" for name in order for note in results[name].notes]
    contended = [name for name in order if results[name].cpu_share < 0.9]
    if contended:
        notes.append(
            f"- cpu/wall below 0.9 ({', '.join(contended)}): the pinned CPU was shared with "
            "other work or the peer waited on I/O; those figures understate it"
        )
    timed = all(r.timed for r in results.values())
    lines.append("")
    if bench_input is not None:
        lines.append(f"Input: {bench_input.describe()}.")
    lines.append(
        f"Pinned to CPU {cpu}; {platform.python_implementation()} {platform.python_version()}; "
        + (
            "timed by pytest-benchmark."
            if timed
            else "--benchmark-disable: one run each, figures are indicative only."
        )
    )
    if notes:
        lines.append("")
        lines.extend(notes)
    return lines


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    results = config.stash.get(_RESULTS, None)
    if not results:
        return
    table = results_table(results, config.stash.get(_INPUT, None), config.stash.get(_CPU, None))
    terminalreporter.write_sep("=", "audit-parse: records per second, same input, one CPU")
    for line in table:
        terminalreporter.write_line(line)
    if not all(result.timed for result in results.values()):
        return  # a --benchmark-disable run does not replace the last timed table
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        RESULTS_MD.parent.mkdir(exist_ok=True)
        RESULTS_MD.write_text(f"# audit-parse ({stamp})\n\n" + "\n".join(table) + "\n")
    except OSError as exc:
        terminalreporter.write_line(f"(could not write {RESULTS_MD}: {exc})")
    else:
        terminalreporter.write_line(f"(written to {RESULTS_MD.relative_to(REPO)})")
