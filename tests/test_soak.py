"""Issue 12, item 5: the soak. `micro-agent run` (a real process, the real collectors, the IoT
Hub stand-in over TLS) under a mixed tagged load for AGENT_SOAK_MINUTES (3 in CI; 20 with
`scripts/bench soak`), with faults injected on a schedule scaled to the duration:

- load: 200 exec/s (tests/hostile_spawner.c runs a static `true` with a unique tag as its
  argument), 50 TCP connections/s on loopback (each to its own 127.a.b.c address: the tag is
  the peer address), a login every 0.5 s (a USER_PROCESS record appended to the wtmp the Login
  collector reads, under --root, with a unique user), a twin patch every 10 s (Login_CacheSize
  alternating 4096/4095), the hub stand-in stopped for a while every few minutes;
- faults: the data directory (a size-limited tmpfs) full, then read-only (a read-only bind
  mount over it: a remount of the tmpfs itself is refused while the agent holds files open
  for writing), the hub refusing the token (the identity's key changed, the connections cut;
  then the key back and the connection string file rewritten, as an operator would), and
  wall-clock jumps of +1 h and -1 h through the agent's own clock (agent.clock's offset file:
  the machine's clock stays as it is).

At the end (SIGTERM; a second run drains what the first left in the outbox) every tag is found
in the telemetry the stand-in received, or the drops the envelopes counted cover what is
missing; sequence numbers have no gap the outbox's counters do not explain; no tag is in two
batches; RSS, open fds and threads sampled every few seconds stay flat (least-squares slopes
after a warm-up, bounds below); each fault is visible in status.json while it lasts or right
after, and in the reported properties. The figures are printed (docs/soak.md).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hub.broker import Certificates
from hub.hub import Hub
from test_live_audit import kernel_audit  # noqa: F401  (a fixture: pytestmark uses it)
from test_runtime import QUIET

from agent.clock import OFFSET_FILE_ENV
from agent.envelope import decode_envelope

pytestmark = [
    pytest.mark.live,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("kernel_audit"),
]

MINUTES = float(os.environ.get("AGENT_SOAK_MINUTES", "3"))
DURATION_S = MINUTES * 60
EXEC_RATE = 200
CONNECT_RATE = 50
LOGIN_EVERY_S = 0.5
PATCH_EVERY_S = 10.0
SAMPLE_EVERY_S = 3.0
MODULE = ("soak-device", "iot-micro-agent")
SPAWNER_SOURCE = Path(__file__).with_name("hostile_spawner.c")
DATA_SIZE = "64m"
MAX_FAULT_S = 75.0

# Bounds of the slopes after the warm-up, per minute. The warm-up covers the first lane
# interval (a minute): the aggregators' tables grow to an interval's entries and stay.
# 20 minutes: RSS 1 MiB/min (a leak of 100 bytes per event at the load's 250 events/s is
# 1.5 MB/min), fds and threads 0.5/min (one per reconnect or per fault breaks it).
# 3 minutes (CI): what is left after the warm-up is two minutes full of faults (outbox
# growth during outages, reconnects' sockets and threads), and two runs measured RSS +2.4 and
# +4.2 MB/min and fds +1.25 and +1.74/min over it (RSS 49 -> 58 MB); the 20-minute run shows
# RSS levelling off near 70 MB (+0.68 MB/min over its whole steady part, fds +0.06/min,
# docs/soak.md): the bounds are 8 MiB/min (a leak of 550 bytes per event breaks it) and 3 fds
# or threads a minute.
LONG = DURATION_S >= 600
RSS_SLOPE_KB_PER_MIN = 1024.0 if LONG else 8192.0
FD_SLOPE_PER_MIN = 0.5 if LONG else 3.0
THREAD_SLOPE_PER_MIN = 0.5 if LONG else 3.0
WARM_UP_S = max(75.0, DURATION_S * 0.15)

# glibc's struct utmp on x86_64 and the 32-bit ABIs (tests/test_utmp.py).
UTMP_FMT = "<hxxi32s4s32s256shhiIi16s20x"
USER_PROCESS = 7


def scaled(fraction: float) -> float:
    return DURATION_S * fraction


# ---- the load -------------------------------------------------------------------------------


@dataclass
class Load:
    """The tagged workload's threads and what each one really did (the ground truth)."""

    run: str
    base: Path
    root: Path
    spawner: Path
    true: Path
    stop: threading.Event = field(default_factory=threading.Event)
    exec_report: dict[str, Any] = field(default_factory=dict)
    exec_tags: list[str] = field(default_factory=list)
    connect_tags: list[str] = field(default_factory=list)
    connect_failed: int = 0
    login_tags: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._execs, self._connects, self._logins):
            t = threading.Thread(target=self._guard(target), name=target.__name__, daemon=True)
            t.start()
            self.threads.append(t)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                fn()
            except BaseException as err:  # noqa: BLE001  (handed to the test)
                self.errors.append(err)

        return guarded

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=DURATION_S + 60)
        assert not self.errors, f"the load failed: {self.errors!r}"

    def _execs(self) -> None:
        n = int(EXEC_RATE * DURATION_S)
        self.exec_tags = [f"sx{self.run}-{i}" for i in range(n)]
        listing = self.base / "exec-list"
        true = bytes(self.true)
        listing.write_bytes(b"".join(true + b"\0" + t.encode() + b"\0" for t in self.exec_tags))
        out = subprocess.run([str(self.spawner), "exec", str(EXEC_RATE), str(listing)],
                             capture_output=True, text=True, timeout=DURATION_S + 120, check=False)
        assert out.returncode == 0, f"spawner: {out.stdout} {out.stderr}"
        self.exec_report = json.loads(out.stdout)

    def _connects(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 0))
        listener.listen(256)
        port = listener.getsockname()[1]

        def accept() -> None:
            listener.settimeout(0.5)
            while not self.stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.close()

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        started = time.monotonic()
        i = 0
        while not self.stop.is_set() and time.monotonic() - started < DURATION_S:
            # 127.0.0.0/8 is all loopback: each connection its own peer address, the tag.
            addr = f"127.{1 + i // (254 * 256)}.{(i // 254) % 256}.{i % 254 + 1}"
            try:
                with socket.create_connection((addr, port), timeout=2.0):
                    pass
                self.connect_tags.append(addr)
            except OSError:
                self.connect_failed += 1
            i += 1
            time.sleep(max(0.0, started + i / CONNECT_RATE - time.monotonic()))
        self.stop.wait(1.0)
        acceptor.join()
        listener.close()

    def _logins(self) -> None:
        wtmp = self.root / "var/log/wtmp"
        started = time.monotonic()
        i = 0
        while not self.stop.is_set() and time.monotonic() - started < DURATION_S:
            user = f"sl{self.run[:6]}{i}"
            now = time.time()
            record = struct.pack(UTMP_FMT, USER_PROCESS, os.getpid(), b"pts/77", b"ts77",
                                 user.encode(), b"soak.example", 0, 0, 0, int(now),
                                 int(now % 1 * 1e6), b"\x7f\0\0\x01".ljust(16, b"\0"))
            with open(wtmp, "ab") as f:  # as login(1) appends: one write of one record
                f.write(record)
            self.login_tags.append(user)
            i += 1
            self.stop.wait(LOGIN_EVERY_S)


# ---- the agent ------------------------------------------------------------------------------


@dataclass
class AgentRun:
    proc: subprocess.Popen[bytes]
    status_file: Path

    def status(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) and doc.get("pid") == self.proc.pid else {}


def start_agent(base: Path, data: Path, config: Path, cs_file: Path, certs: Certificates,
                root: Path) -> AgentRun:
    env = {k: v for k, v in os.environ.items() if k != "IOTHUB_CONNECTION_STRING"}
    env[OFFSET_FILE_ENV] = str(base / "clock-offset")
    run_dir = base / "run"
    (run_dir / "status.json").unlink(missing_ok=True)
    with open(base / "agent.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data), "--config",
             str(config), "--connection-string-file", str(cs_file), "--ca-file",
             str(certs.ca.cert), "--root", str(root), "--runtime-dir", str(run_dir)],
            stdout=subprocess.DEVNULL, stderr=log, env=env)
    return AgentRun(proc, run_dir / "status.json")


def wait_for(run: AgentRun, predicate: Callable[[dict[str, Any]], bool], timeout: float,
             what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = run.status()
        if doc and predicate(doc):
            return doc
        assert run.proc.poll() is None, f"micro-agent run exited ({run.proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s; status {doc.get('uplink')}"
        time.sleep(0.2)


def connected(doc: dict[str, Any]) -> bool:
    return bool(doc["uplink"]["state"] == "connected")


def drained(doc: dict[str, Any]) -> bool:
    return (all(d["count"] == 0 for d in doc["outbox"]["depth"].values())
            and doc["uplink"]["in_flight"] == 0)


@dataclass
class Sample:
    at: float  # seconds since the start of the load
    rss_kb: int
    fds: int
    threads: int
    outbox_bytes: int


def sample(pid: int, outbox: Path, at: float) -> Sample:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    try:
        size = sum(e.stat().st_size for e in os.scandir(outbox) if e.is_file())
    except OSError:
        size = -1
    return Sample(at, int(fields["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")),
                  int(fields["Threads"]), size)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return 60.0 * sxy / sxx if sxx else 0.0


# ---- the faults -----------------------------------------------------------------------------


@dataclass
class Faults:
    """The schedule's actions, and what status.json said during each fault."""

    base: Path
    data: Path
    hub: Hub
    cs_file: Path
    run: Callable[[], AgentRun]
    seen: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    mounted_ro: bool = False
    hub_down: threading.Event = field(default_factory=threading.Event)

    def note(self, what: str, t0: float) -> None:
        self.log.append(f"{time.monotonic() - t0:7.1f} s {what}")

    def clock(self, offset_s: float) -> None:
        path = self.base / "clock-offset"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{offset_s}\n")
        os.replace(tmp, path)

    def disk_full(self, hold_s: float) -> None:
        before = int(wait_for(self.run(), lambda d: True, 10, "status")["outbox"]["counters"]["write_errors"])
        filler = self.data / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 4096, 1):  # unbuffered: the last small room goes too
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)
        self.hold("disk_full", before, hold_s)
        # The read-only fault may have begun meanwhile (faults overlap): the filler goes
        # once the directory is writable again.
        while True:
            try:
                filler.unlink()
                return
            except OSError as err:
                if err.errno != errno.EROFS:
                    raise
                time.sleep(0.5)

    def read_only(self, hold_s: float) -> None:
        before = int(wait_for(self.run(), lambda d: True, 10, "status")["outbox"]["counters"]["write_errors"])
        subprocess.run(["mount", "--bind", str(self.data), str(self.data)], check=True)
        self.mounted_ro = True
        subprocess.run(["mount", "-o", "remount,ro,bind", str(self.data)], check=True)
        try:
            (self.data / "probe").write_text("x")
            raise AssertionError("the data directory is still writable")
        except OSError:
            pass
        self.hold("read_only", before, hold_s)
        self.undo_read_only()

    def hold(self, fault: str, write_errors_before: int, hold_s: float) -> None:
        """Keep a data directory fault for hold_s, and on until the outbox met it (its writes
        come when a lane's interval ends, once a minute here), at most MAX_FAULT_S."""
        started = time.monotonic()
        while True:
            doc = self.run().status()
            if doc and doc["outbox"]["counters"]["write_errors"] > write_errors_before:
                self.seen[fault] = doc["outbox"]["counters"]["write_errors"] - write_errors_before
            held = time.monotonic() - started
            if held >= MAX_FAULT_S or (held >= hold_s and fault in self.seen):
                self.seen[f"{fault}_held_s"] = round(held, 1)
                return
            time.sleep(0.5)

    def undo_read_only(self) -> None:
        if self.mounted_ro:
            # Lazy: a directory the agent has open through the read-only mount (an fsync of
            # the outbox directory, say) would make a plain umount fail with EBUSY.
            subprocess.run(["umount", "-l", str(self.data)], check=True)
            self.mounted_ro = False

    def outage(self, down_s: float) -> None:
        self.hub_down.set()
        try:
            self.hub.stop()
            time.sleep(down_s)
            self.hub.start()
        finally:
            self.hub_down.clear()

    def refuse_token(self, key: str) -> None:
        self.hub_down.set()
        try:
            self.hub.identity(*MODULE, key="d3JvbmcgZGV2aWNlIGtleQ==")  # another key
            self.hub.gate.stop(abort=True)  # the agent reconnects, and is refused
            self.hub.gate.start()
            doc = wait_for(self.run(), lambda d: d["uplink"]["state"].startswith("failed"), 60,
                           "the uplink failed on the refused token")
            self.seen["refused"] = doc["uplink"]["state"]
            time.sleep(5)
            # The operator fixes it: the hub takes the key again, the file is rewritten.
            self.hub.identity(*MODULE, key=key)
            text = self.cs_file.read_text()
            tmp = self.cs_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o600)
            os.replace(tmp, self.cs_file)
            wait_for(self.run(), connected, 90, "connected again after the token was fixed")
        finally:
            self.hub_down.clear()


# ---- the test -------------------------------------------------------------------------------


@pytest.fixture
def soak_base(tmp_path: Path) -> Iterator[Path]:
    """tmp_path with the data directory on its own size-limited tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs and injects faults: needs root")
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DATA_SIZE},mode=0700", "soak-data",
                    str(data)], check=True)
    try:
        yield tmp_path
    finally:
        for _ in range(3):  # a read-only bind left by a failed test, then the tmpfs
            if subprocess.run(["mountpoint", "-q", str(data)], check=False).returncode != 0:
                break
            subprocess.run(["umount", "-l", str(data)], check=False)


def build_spawner(where: Path) -> tuple[Path, Path]:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None, "a C compiler builds the core; it builds the spawner too"
    path, true = where / "hostile_spawner", where / "true"
    flags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([cc, *flags, "-o", str(path), str(SPAWNER_SOURCE)], check=True)
    subprocess.run([cc, *flags, "-static", "-DHOSTILE_TRUE", "-o", str(true), str(SPAWNER_SOURCE)],
                   check=True)
    return path, true


def tokens_of(value: Any, out: set[str]) -> None:
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, list | tuple):
        for v in value:
            tokens_of(v, out)


def missing_spans(tags: list[str], missing: list[str], rate: float) -> list[str]:
    """The missing tags as spans of the load's seconds with how many are missing in each
    ("346.2-412.0: 13,160"), at most 12 spans."""
    where = {t: i for i, t in enumerate(tags)}
    idx = sorted(where[t] for t in missing if t in where)
    spans: list[list[int]] = []  # first, last, count
    for i in idx:
        if spans and i <= spans[-1][1] + max(1, int(rate)):  # gaps under a second join
            spans[-1][1] = i
            spans[-1][2] += 1
        else:
            spans.append([i, i, 1])
    return [f"{a / rate:.1f}-{b / rate:.1f}: {n:,}" for a, b, n in spans[:12]]


@pytest.mark.timeout(int(DURATION_S) + 600)
def test_soak_mixed_load_with_faults(iothub: Hub, hub_certs: Certificates, soak_base: Path) -> None:
    base = soak_base
    data, root = base / "data", base / "root"
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/wtmp").write_bytes(b"")
    spawner, true = build_spawner(base)
    identity = iothub.identity(*MODULE)
    assert identity.key is not None
    key = identity.key
    cs_file = base / "connection_string"
    cs_file.write_text(identity.connection_string() + "\n")
    cs_file.chmod(0o600)
    config = base / "config.json"
    config.write_text(json.dumps({
        **QUIET, "Login_Disabled": False, "NetworkActivity_Disabled": False,
        "CollectorsCore_PriorityIntervals": "1,1,1",
        "Process_CacheSize": 65536, "NetworkActivity_CacheSize": 65536, "Login_CacheSize": 4096,
    }))
    (base / "clock-offset").write_text("0\n")
    agent_started = time.monotonic()
    runs = [start_agent(base, data, config, cs_file, hub_certs, root)]
    faults = Faults(base, data, iothub, cs_file, lambda: runs[-1])
    load = Load(uuid.uuid4().hex[:8], base, root, spawner, true)
    samples: list[Sample] = []
    patches: list[int] = []
    soak_status: dict[str, Any] = {}  # the last status.json of the run under load
    try:
        wait_for(runs[0], lambda d: connected(d) and all(
            d["collectors"][c]["state"] == "running" for c in ("Process", "NetworkActivity", "Login")),
            60, "connected with Process, NetworkActivity and Login running")
        t0 = time.monotonic()
        load.start()
        outage_s = 30.0 if DURATION_S >= 600 else 10.0

        def lane_close_after(at: float) -> float:
            """The first end of a lane's interval (a minute, from the agent's start, plus about
            a second of Python start-up) after `at` seconds of load: where batches are stored.
            The data directory faults straddle one, so that they meet the outbox's writes."""
            since_start = at + (t0 - agent_started) - 1.0
            return at + (60.0 - since_start % 60.0)

        full_at = lane_close_after(scaled(0.25))
        ro_at = lane_close_after(full_at + 10)
        ro_before = 8.0 if DURATION_S < 600 else 20.0
        ro_hold = 18.0 if DURATION_S < 600 else 60.0
        schedule: list[tuple[float, str, Callable[[], None]]] = [
            (scaled(0.08), "clock +1 h", lambda: faults.clock(3600)),
            (scaled(0.15), f"hub down {outage_s:.0f} s", lambda: faults.outage(outage_s)),
            (full_at - 6.0, "data directory full", lambda: faults.disk_full(12.0)),
            (scaled(0.35), "clock -1 h", lambda: faults.clock(0)),
            (ro_at - ro_before, "data directory read-only", lambda: faults.read_only(ro_hold)),
            (scaled(0.55), "clock -1 h", lambda: faults.clock(-3600)),
            (scaled(0.62), "hub refuses the token", lambda: faults.refuse_token(key)),
            (scaled(0.75), "clock +1 h", lambda: faults.clock(0)),
        ]
        # The 20-minute run: an outage every 5 minutes.
        schedule += [(at, f"hub down {outage_s:.0f} s", lambda: faults.outage(outage_s))
                     for at in (300.0, 600.0, 900.0) if at < scaled(0.85)]
        schedule.sort(key=lambda s: s[0])

        def fault_script() -> None:
            """Each fault in its own thread at its time: they may overlap, as faults do."""
            started: list[threading.Thread] = []
            for at, what, action in schedule:
                time.sleep(max(0.0, t0 + at - time.monotonic()))

                def one(what: str = what, action: Callable[[], None] = action) -> None:
                    faults.note(what, t0)
                    action()
                    faults.note(f"{what}: over", t0)

                thread = threading.Thread(target=load._guard(one), daemon=True)
                thread.start()
                started.append(thread)
            for thread in started:
                thread.join()

        script = threading.Thread(target=load._guard(fault_script), daemon=True)
        script.start()
        next_patch = t0 + PATCH_EVERY_S
        next_sample = t0
        while time.monotonic() - t0 < DURATION_S or script.is_alive():
            now = time.monotonic()
            assert runs[-1].proc.poll() is None, "micro-agent run exited during the soak"
            if now >= next_sample:
                next_sample += SAMPLE_EVERY_S
                samples.append(sample(runs[-1].proc.pid, data / "outbox", now - t0))
                soak_status = runs[-1].status() or soak_status
            if now >= next_patch:
                next_patch += PATCH_EVERY_S
                if not faults.hub_down.is_set():
                    value = 4096 - len(patches) % 2
                    try:
                        iothub.set_desired({"Login_CacheSize": value})
                        patches.append(value)
                    except Exception as err:  # noqa: BLE001  (the hub went down meanwhile)
                        faults.log.append(f"patch {value} not sent: {err}")
            time.sleep(0.2)
        load.join()
        script.join()
        assert not load.errors, f"the fault script failed: {load.errors!r}"
        soak_status = runs[-1].status() or soak_status
        time.sleep(2.0)  # the last records reach the agent
        wait_for(runs[-1], connected, 90, "connected at the end")
        runs[-1].proc.send_signal(signal.SIGTERM)
        assert runs[-1].proc.wait(timeout=90) == 0
        # What the first run stored and could not send in its last moment: a second run sends it.
        runs.append(start_agent(base, data, config, cs_file, hub_certs, root))
        wait_for(runs[-1], lambda d: connected(d) and drained(d), 120, "the outbox drained")
        reported_wait = time.monotonic()
        final = runs[-1].status()
        runs[-1].proc.send_signal(signal.SIGTERM)
        assert runs[-1].proc.wait(timeout=90) == 0
    finally:
        load.stop.set()
        faults.undo_read_only()
        for r in runs:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
    agent_log = (base / "agent.log").read_text(errors="replace")

    # -- what arrived -------------------------------------------------------------------------
    by_seq: dict[int, dict[str, Any]] = {}
    payload_of: dict[int, bytes] = {}
    seq_conflicts: list[int] = []  # one seq, two different batches: never
    for record in iothub.telemetry:
        env = decode_envelope(record.payload)
        seq = int(env["seq"])
        if payload_of.setdefault(seq, record.payload) != record.payload:
            seq_conflicts.append(seq)
        by_seq.setdefault(seq, env)  # a batch resent after an outage: same seq, same bytes
    tags = {*load.exec_tags, *load.connect_tags, *load.login_tags}
    seen_in: dict[str, int] = {}  # tag -> the first seq it was in
    batch_of: dict[tuple[str, str], int] = {}  # (event type, tag) -> its batch
    split: list[str] = []
    drops: Counter[str] = Counter()
    for seq, env in sorted(by_seq.items()):
        drops.update(env.get("drops") or {})
        for event in env["events"]:
            found: set[str] = set()
            for value in event.values():
                tokens_of(value, found)
            for token in found & tags:
                # One event of a kind per tag: in two batches it was split (or sent twice
                # under two seqs). A connection is both a `net` (audit) and a `conn`
                # (sock_diag, which may see it later in TIME_WAIT): different kinds; and
                # sock_diag may see it open in one snapshot and closed in the next: a `conn`
                # with op open and one with op close, two aggregation entries, which land in
                # two batches when the interval's flush is split (seen after the disk-full
                # fault, when the lane's backlog filled four batches in one flush).
                key = (str(event.get("t")), str(event.get("op")), token)
                if batch_of.setdefault(key, seq) != seq:
                    split.append(f"{key} in {batch_of[key]} and {seq}")
                seen_in.setdefault(token, seq)
    # For a post-mortem: what each batch held of the load (tag positions), beside the log.
    exec_index = {t: i for i, t in enumerate(load.exec_tags)}
    with (base / "batches.jsonl").open("w") as diag:
        for seq, env in sorted(by_seq.items()):
            found_in: set[str] = set()
            for event in env["events"]:
                for value in event.values():
                    tokens_of(value, found_in)
            idx = sorted(exec_index[t] for t in found_in if t in exec_index)
            diag.write(json.dumps({"seq": seq, "ts": env["ts"], "boot": env.get("boot"),
                                   "prio": env["prio"], "coll": env.get("coll"), "n": env["n"],
                                   "drops": env.get("drops"), "exec_tags": len(idx),
                                   "exec_first": idx[0] if idx else None,
                                   "exec_last": idx[-1] if idx else None}) + "\n")
    pending = final.get("outbox", {}).get("pending_drops") or {}
    drops.update(pending)
    dropped_events = sum(n for reason, n in drops.items() if not reason.endswith("_batches"))
    missing = {
        "exec": [t for t in load.exec_tags[:load.exec_report.get("started", 0)] if t not in seen_in],
        "connect": [t for t in load.connect_tags if t not in seen_in],
        "login": [t for t in load.login_tags if t not in seen_in],
    }
    seqs = sorted(by_seq)
    gaps = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs)) if seqs else []
    counters = final["outbox"]["counters"]
    # Envelope times follow the agent's clock: a backwards step between consecutive batches
    # only where the clock was set back (twice in the schedule), never otherwise.
    back_steps = [(a, b) for a, b in zip(seqs, seqs[1:])
                  if by_seq[b]["ts"] < by_seq[a]["ts"] - 5000]

    # -- the figures --------------------------------------------------------------------------
    steady = [s for s in samples if s.at >= WARM_UP_S]
    slopes = {name: round(slope_per_min([(s.at, float(getattr(s, name))) for s in steady]), 2)
              for name in ("rss_kb", "fds", "threads", "outbox_bytes")} if len(steady) >= 5 else {}
    figures = {
        "minutes": MINUTES,
        "exec": load.exec_report,
        "connects": {"made": len(load.connect_tags), "failed": load.connect_failed,
                     "rate": round(len(load.connect_tags) / DURATION_S, 1)},
        "logins": len(load.login_tags),
        "twin_patches": len(patches),
        "batches": len(by_seq),
        "missing": {k: len(v) for k, v in missing.items()},
        # Where in the run the missing tags were: ranges of load seconds (tag index / rate).
        "missing_at_s": {
            "exec": missing_spans(load.exec_tags, missing["exec"], EXEC_RATE),
            "connect": missing_spans(load.connect_tags, missing["connect"], CONNECT_RATE),
            "login": missing_spans(load.login_tags, missing["login"], 1 / LOGIN_EVERY_S),
        },
        "dropped_by_reason": dict(sorted(drops.items())),
        "seq_gaps": len(gaps),
        "seq_conflicts": seq_conflicts[:20],
        "outbox_counters": counters,
        "slopes_per_min_after_warm_up": slopes,
        "rss_kb": [min(s.rss_kb for s in steady), max(s.rss_kb for s in steady)] if steady else [],
        "fds": [min(s.fds for s in steady), max(s.fds for s in steady)] if steady else [],
        "threads": [min(s.threads for s in steady), max(s.threads for s in steady)] if steady else [],
        "outbox_bytes_max": max((s.outbox_bytes for s in samples), default=0),
        "faults_seen": faults.seen,
        "clock": soak_status.get("clock"),
        "uplink_state_changes": soak_status.get("uplink", {}).get("state_changes"),
        "schedule": faults.log,
        "tracebacks_in_log": agent_log.count("Traceback"),
    }
    print("\nSOAK " + json.dumps(figures, indent=1))

    # -- the verdict --------------------------------------------------------------------------
    assert load.exec_report.get("started", 0) >= 0.9 * EXEC_RATE * DURATION_S, load.exec_report
    assert len(load.connect_tags) >= 0.9 * CONNECT_RATE * DURATION_S
    assert seq_conflicts == [], f"one seq carried different batches: {seq_conflicts[:20]}"
    total_missing = sum(len(v) for v in missing.values())
    assert total_missing <= dropped_events, (
        f"{total_missing} tags missing at the receiver, only {dropped_events} events counted as "
        f"dropped: e.g. {[v[:3] for v in missing.values()]}")
    assert split == [], f"tags in two batches: {split[:10]}"
    lost_batches = counters["evicted_full"] + counters["expired"] + counters["corrupt"]
    assert len(gaps) <= lost_batches, f"sequence gaps {gaps[:20]} not explained by {counters}"
    assert len(back_steps) <= 2, f"envelope times stepped back without a jump: {back_steps}"
    # Faults, visible: status.json during or right after, and the reported properties.
    assert faults.seen.get("disk_full", 0) > 0, "a full data directory left no write error"
    assert faults.seen.get("read_only", 0) > 0, "a read-only data directory left no write error"
    assert "refused" in faults.seen
    clock = soak_status["clock"]
    assert clock["jumps_forward"] >= 2 and clock["jumps_backward"] >= 2, clock
    assert soak_status["uplink"]["state_changes"]["failed"] >= 1
    # The reported properties said so, in some patch of the run under load (counters go at
    # most once a minute; the second run reports its own, from zero).
    def ever(group: str, name: str) -> int:
        return max((int(p.get("counters", {}).get(group, {}).get(name, 0))
                    for p in iothub.reported_patches if isinstance(p.get("counters"), dict)),
                   default=0)

    deadline = reported_wait + 75
    while ever("outbox", "write_errors") == 0 and time.monotonic() < deadline:
        time.sleep(1)
    seen_reported = {"write_errors": ever("outbox", "write_errors"),
                     "jumps_forward": ever("clock", "jumps_forward"),
                     "jumps_backward": ever("clock", "jumps_backward"),
                     "uplink_failed": ever("uplink", "failed")}
    print("reported counters seen:", seen_reported)
    assert seen_reported["write_errors"] > 0, seen_reported
    assert seen_reported["jumps_forward"] >= 1 and seen_reported["jumps_backward"] >= 1, seen_reported
    assert seen_reported["uplink_failed"] >= 1, seen_reported
    reported = iothub.reported
    assert reported["Login_CacheSize"] == patches[-1], (reported["Login_CacheSize"], patches[-1:])
    # Flat: slopes within the bounds above.
    assert slopes, "too few samples after the warm-up"
    assert slopes["rss_kb"] <= RSS_SLOPE_KB_PER_MIN, slopes
    assert slopes["fds"] <= FD_SLOPE_PER_MIN, slopes
    assert slopes["threads"] <= THREAD_SLOPE_PER_MIN, slopes
