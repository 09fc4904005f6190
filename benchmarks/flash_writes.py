"""Bytes the agent writes to its disk per hour, idle and under an exec load.

    python3 benchmarks/flash_writes.py [--seconds 600] [--rate 100] [--json]
    scripts/bench flash [SECONDS]          (the same, SECONDS per phase, default 600)

Runs `micro-agent run` as it runs on a device without an IoT Hub: the local default (every
collector on, batches delivered to DATA/delivered), status.json on a tmpfs as the systemd
unit's RuntimeDirectory= puts it, the data directory on a real disk (default a new directory
under /var/tmp; a tmpfs is refused, it would measure nothing). Needs root; run it as the
audit owner (no auditd) to measure the agent's own audit source. Touches the kernel audit
state like the agent does: run it with nothing else using the kernel's audit.

Two phases of --seconds each, after the agent said it is ready: idle (nothing but the
machine's own activity), then load (this process spawns /bin/true TAG-n at --rate per second,
on absolute deadlines so that a late spawn does not slow the rest). For each phase it reads
/proc/PID/io of the agent and of its live children at the phase's start and end (the io of
children already reaped, the inventory snapshots, is folded into the agent's by the kernel) and
reports per hour:

- write_bytes: bytes the agent caused to be sent to the block layer (what wears the flash,
  before the file system's own journal and the device's write amplification);
- cancelled: write_bytes of pages truncated or removed before they were written back;
- wchar and syscw: bytes and calls of write(2) and the like, to any file or socket;
- the data directory's size on disk (allocated blocks) at the end of the phase.

Once each, not per hour: what the start wrote (from exec to ready: the first snapshots) and
what the stop wrote (the SIGTERM flush of every collector and lane, from the agent's children
usage once it is reaped). A short idle phase holds no lane interval (High closes every 30
minutes by default): the stop's figure is what closing every lane at once costs.

At the end the agent is stopped with SIGTERM and the exec events of the load phase are counted
in its deliveries (`micro-agent decode`), so a table is never printed for a load the agent did
not see. Figures taken while other work runs on the machine include that work's exec events
(the idle phase is idle for the agent only when the machine is).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

AGENT = [sys.executable, "-m", "agent.cli"]
IO_FIELDS = ("wchar", "syscw", "write_bytes", "cancelled_write_bytes")


@dataclass
class Phase:
    name: str
    seconds: float
    execs: int  # spawned by this tool
    write_bytes: int
    cancelled_write_bytes: int
    wchar: int
    syscw: int
    data_dir_bytes: int
    start_ms: int  # wall clock, for the exec events of the phase in the deliveries
    end_ms: int
    execs_seen: int = 0  # exec events of the whole machine the agent delivered for the phase
    process_source: str = ""  # what Process ran on at the phase's end (status.json)

    def per_hour(self, value: int) -> float:
        return value * 3600.0 / self.seconds


def fs_type(path: Path) -> str:
    """The file system type of the mount that holds path (the longest mount point prefix)."""
    best, kind = "", "?"
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mount_point = left.split()[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, right.split()[0]
    return kind


def descendants(pid: int) -> list[int]:
    """pid and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def tree_io(pid: int) -> dict[str, int]:
    total = dict.fromkeys(IO_FIELDS, 0)
    for p in descendants(pid):
        try:
            text = Path(f"/proc/{p}/io").read_text()
        except OSError:
            continue  # a child that ended between the listing and the read: folded into its parent
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value)
    return total


def disk_usage(root: Path) -> int:
    """Bytes allocated to the files under root (st_blocks, as du counts them)."""
    used = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass  # removed meanwhile (a batch delivered, a temporary file renamed)
    return used


def spawn_load(rate: int, seconds: float, tag: str) -> int:
    """/bin/true TAG-n at rate per second on absolute deadlines; returns how many started."""
    total = int(rate * seconds)
    started = 0
    running: set[int] = set()  # waited for by pid: the agent is a child of this process too
    t0 = time.monotonic()
    for i in range(total):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            running.add(os.posix_spawn("/bin/true", ["/bin/true", f"{tag}-{i}"], {}))
            started += 1
        except OSError:
            pass  # counted as not started: the achieved rate says so
        running -= {pid for pid in running if os.waitpid(pid, os.WNOHANG)[0] == pid}
    for pid in running:
        os.waitpid(pid, 0)
    return started


def process_source(runtime_dir: Path) -> str:
    try:
        doc = json.loads((runtime_dir / "status.json").read_text())
    except (OSError, ValueError):
        return "?"  # being replaced this very moment: rare, and only a label
    process = doc.get("collectors", {}).get("Process", {})
    return f"{process.get('state', '?')} {process.get('source', '')}".strip()


def measure(pid: int, data_dir: Path, runtime_dir: Path, name: str, seconds: float, rate: int,
            tag: str) -> Phase:
    before = tree_io(pid)
    start_ms = time.time_ns() // 1_000_000
    t0 = time.monotonic()
    execs = spawn_load(rate, seconds, tag) if rate else 0
    rest = seconds - (time.monotonic() - t0)
    if rest > 0:
        time.sleep(rest)
    elapsed = time.monotonic() - t0
    after = tree_io(pid)
    delta = {k: after[k] - before[k] for k in IO_FIELDS}
    return Phase(name, elapsed, execs, delta["write_bytes"], delta["cancelled_write_bytes"],
                 delta["wchar"], delta["syscw"], disk_usage(data_dir), start_ms,
                 time.time_ns() // 1_000_000, process_source=process_source(runtime_dir))


def start_agent(data_dir: Path, runtime_dir: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        proc = subprocess.Popen([*AGENT, "run", "--data-dir", str(data_dir), "--runtime-dir",
                                 str(runtime_dir), "--config", str(config)], stderr=err)
    deadline = time.monotonic() + 60
    while not (runtime_dir / "status.json").exists():
        if proc.poll() is not None:
            raise SystemExit(f"flash_writes: micro-agent run exited {proc.returncode}:\n"
                             + log.read_text(errors="replace"))
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("flash_writes: micro-agent run did not start within 60 s")
        time.sleep(0.1)
    return proc


def count_execs(data_dir: Path, tag: str, phases: list[Phase]) -> int:
    """The tool's own execs found in the deliveries; sets each phase's execs_seen (every
    exec event of the machine in the phase's window, merged entries by their hits)."""
    out = subprocess.run([*AGENT, "decode", str(data_dir / "delivered")], capture_output=True,
                         check=True)
    mine = set()
    for line in out.stdout.splitlines():
        event = json.loads(line)
        if event.get("t") != "exec":
            continue
        mine.update(a for a in event.get("argv") or [] if str(a).startswith(tag))
        ts = event.get("first", event.get("ts")) or 0
        for p in phases:
            if p.start_ms <= ts < p.end_ms:
                p.execs_seen += int(event.get("hits", 1))
    return len(mine)


def human(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(phases: list[Phase]) -> str:
    rows = [("| phase | seconds | execs/s | exec events/s | write_bytes/h | cancelled/h | wchar/h "
             "| syscw/h | data dir |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in phases:
        rows.append(f"| {p.name} | {p.seconds:.0f} | {p.execs / p.seconds:.0f} | "
                    f"{p.execs_seen / p.seconds:.0f} | "
                    f"{human(p.per_hour(p.write_bytes))} | {human(p.per_hour(p.cancelled_write_bytes))} | "
                    f"{human(p.per_hour(p.wchar))} | {p.per_hour(p.syscw):.0f} | {human(p.data_dir_bytes)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flash_writes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="length of each phase (default 600)")
    ap.add_argument("--rate", type=int, default=100, help="execs per second of the load phase")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                    help="where the data directory is made (a real disk; default /var/tmp)")
    ap.add_argument("--runtime-parent", type=Path, default=Path("/dev/shm"),
                    help="a tmpfs for status.json, as RuntimeDirectory= (default /dev/shm)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON, not a table")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("flash_writes: needs root (the agent's collectors)", file=sys.stderr)
        return 2
    kind = fs_type(args.dir)
    if kind in ("tmpfs", "ramfs"):
        print(f"flash_writes: {args.dir} is on {kind}: give --dir on a real disk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="agent-flash-", dir=args.dir))
    runtime = Path(tempfile.mkdtemp(prefix="agent-flash-run-", dir=args.runtime_parent))
    data_dir, config, log = work / "data", work / "config.json", work / "agent.log"
    config.write_text("{}\n")  # the defaults: every collector on
    tag = f"flash-{uuid.uuid4().hex[:12]}"
    t0 = time.monotonic()
    proc = start_agent(data_dir, runtime, config, log)
    ready_s = time.monotonic() - t0
    start_bytes = tree_io(proc.pid)["write_bytes"]  # from exec to ready: the first snapshots
    try:
        phases = [measure(proc.pid, data_dir, runtime, "idle", args.seconds, 0, tag),
                  measure(proc.pid, data_dir, runtime, f"{args.rate} exec/s", args.seconds,
                          args.rate, tag)]
        before_stop = tree_io(proc.pid)["write_bytes"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        shutil.rmtree(runtime, ignore_errors=True)
    # The agent is reaped: its whole write_bytes (and its reaped children's) is in this
    # process's children usage (the /bin/true of the load write nothing). What the stop added
    # is the SIGTERM flush: every collector's snapshot and every lane's batch, at once.
    total = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock * 512
    stop_bytes = max(0, total - before_stop)
    seen = count_execs(data_dir, tag, phases)
    result = {"data_dir": str(data_dir), "fs": kind, "agent_exit": rc, "execs_delivered": seen,
              "ready_s": ready_s, "start_write_bytes": start_bytes,
              "stop_write_bytes": stop_bytes, "phases": [asdict(p) for p in phases]}
    # Figures of a load the agent did not see would be no figures: say so and keep its log.
    blind = seen < 0.9 * phases[1].execs
    if blind:
        print(f"flash_writes: the agent delivered {seen} of the load's {phases[1].execs} execs "
              f"(Process: {phases[1].process_source}); its log: {log}", file=sys.stderr)
    elif not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"micro-agent run, local default, data directory on {kind} ({args.dir}), "
              f"status.json on tmpfs; per hour, extrapolated from {args.seconds:.0f} s per phase")
        print(table(phases))
        print(f"once: start (exec to ready, {ready_s:.1f} s) wrote {human(start_bytes)}; stop "
              f"(SIGTERM: every lane flushed) wrote {human(stop_bytes)}")
        print(f"exec events of the load phase delivered: {seen} of {phases[1].execs}; "
              f"Process: {' / '.join(p.process_source for p in phases)}; agent exit code {rc}")
    return 0 if rc == 0 and not blind else 1


if __name__ == "__main__":
    sys.exit(main())
