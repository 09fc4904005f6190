"""The IoT Hub uplink end to end: real commands on this machine, seen by the real collectors
(audit), aggregated and batched by the agent's loop, sent by the real SDK over TLS to the
stand-in (tests/hub/), and decoded there. tests/test_uplink_iothub.py checks the uplink with
batches it puts into the outbox itself; this file checks the whole path with the collectors,
as the issue's list asks: the twin at start, Process_Disabled by patch, 200 commands, a 30 s
hub outage, a SIGKILLed `micro-agent run`, and the JSON format.

Most tests run the Agent in this process (the loop turned by the test, as `micro-agent run`
turns it) with only the Process collector on (test_runtime.QUIET) and small messages
(Upload_MaxMessageBytes 4096), so that a few hundred commands make many batches and sequence
numbers have something to prove. A lane's interval is ended by setting its deadline to now,
which is what the loop's own timer does at CollectorsCore_PriorityIntervals; the shortest
interval the twin allows is a minute, too long for a test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hub.broker import Certificates
from hub.hub import Hub, Telemetry
from test_live_audit import kernel_audit  # noqa: F401  (a fixture: pytestmark uses it)
from test_runtime import QUIET
from test_uplink_iothub import (
    AGENT_ID,
    FAST,
    MODULE,
    RESENT_AFTER_A_CRASH,
    WINDOW,
    check_sends,
    module,
)

from agent import __version__
from agent.collectors import Environment, build_collectors
from agent.config import ConfigStore
from agent.envelope import JSON_TYPE, MSGPACK_TYPE, Identity, decode_envelope
from agent.outbox import Outbox
from agent.pipeline import Agent
from agent.uplink.identity import HubIdentity
from agent.uplink.iothub import IotHubUplink, UplinkOptions

pytestmark = [
    pytest.mark.live,
    pytest.mark.root,
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
    # The Process collector owns (or reads) the kernel's audit; a SIGKILLed agent cannot give
    # back what it changed. kernel_audit restores it and fails the test if that is not enough.
    pytest.mark.usefixtures("kernel_audit"),
]

SMALL = {"Upload_MaxMessageBytes": 4096}
# Drop reasons the outbox and the lanes' sinks add (docs/outbox.md, agent.runtime): a hub
# outage must cause none of them. Not among them: `dropped_encode`, one event larger than a
# whole message (4 KiB in these tests). Any other process on the machine with a long command
# line (a compiler's, say) makes such an event; it is counted, an outage does not cause it, and
# the tests' own commands are checked to arrive one by one.
OUTBOX_REASONS = ("outbox_full", "expired", "corrupt", "refused", "write_error", "half_written",
                  "state_lost")
SINK_REASONS = ("dropped_full", "sink_full", "too_large")


class LiveAgent:
    """`micro-agent run` in this process: the real collectors (those QUIET and `config` leave
    on), the IoT Hub uplink and a real outbox; the loop turns when the test turns it."""

    def __init__(self, data: Path, identity: HubIdentity, config: dict[str, Any],
                 options: UplinkOptions = FAST) -> None:
        data.mkdir(parents=True, exist_ok=True)
        config_path = data / "config.json"
        config_path.write_text(json.dumps({**QUIET, **config}))
        self.data = data
        self.store = ConfigStore(str(config_path))
        cfg = self.store.config
        self.outbox = Outbox(data, cfg.outbox.max_bytes, cfg.iothub_module.message_timeout_minutes * 60)
        self.ident = Identity(AGENT_ID, __version__, identity.device_id, identity.module_id or "")
        self.uplink = IotHubUplink(identity, AGENT_ID, options, rng=random.Random(7))
        env = Environment(data_dir=data)
        self.agent = Agent(self.store, env, self.outbox, self.uplink, self.ident, build_collectors(env))
        # As `micro-agent run`: the worker connects while the collectors start.
        self.uplink.attach(self.agent)
        self.agent.start()
        self.closed = False

    def turn(self) -> None:
        self.agent.turn(timeout=0.02)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.turn()

    def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Turns the loop until predicate(); the seconds it took."""
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                pytest.fail(f"{what}: not within {timeout} s; uplink {self.uplink.status()}")
            self.turn()
        return time.monotonic() - started

    def run_while(self, work: Callable[[], None]) -> None:
        """work() in a thread while the loop turns, then 1 s more for the audit records."""
        failed: list[BaseException] = []

        def guarded() -> None:
            try:
                work()
            except BaseException as err:  # handed to the test's thread  # noqa: BLE001
                failed.append(err)

        thread = threading.Thread(target=guarded)
        thread.start()
        while thread.is_alive():
            self.turn()
        thread.join()
        if failed:
            raise failed[0]
        self.spin(1.0)

    def state(self) -> str:
        return str(self.uplink.status()["state"])

    def connected(self, timeout: float = 15.0) -> None:
        self.until(lambda: self.state() == "connected", timeout, "connected")

    def depth(self) -> int:
        return sum(d.count for d in self.outbox.depth().values())

    def end_intervals(self) -> None:
        """Every lane's interval ends at the next turn (its entries flushed, its batch sealed
        and stored), as the loop's timer ends it."""
        for lane in self.agent.lanes.values():
            lane.deadline = 0.0

    def deliver(self, timeout: float = 30.0) -> None:
        """End the intervals, then turn until the outbox is empty and nothing is in flight."""
        self.end_intervals()
        self.turn()
        self.until(lambda: self.depth() == 0 and self.uplink.status()["in_flight"] == 0,
                   timeout, "the outbox delivered")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.agent.shutdown()


@pytest.fixture
def live() -> Iterator[list[LiveAgent]]:
    made: list[LiveAgent] = []
    yield made
    for a in made:
        a.close()


def start(live: list[LiveAgent], tmp_path: Path, identity: HubIdentity,
          config: dict[str, Any] | None = None) -> LiveAgent:
    a = LiveAgent(tmp_path / f"data{len(live)}", identity, {**SMALL, **(config or {})})
    live.append(a)
    return a


def echo(tokens: list[str], pause: float = 0.0) -> Callable[[], None]:
    def work() -> None:
        for token in tokens:
            subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)
            if pause:
                time.sleep(pause)

    return work


def tokens(tag: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:12]
    return [f"{tag}-{run}-{i}" for i in range(n)]


def envelopes(records: list[Telemetry]) -> list[dict[str, Any]]:
    """Every msgpack message decoded, its envelope checked against its properties."""
    out = []
    for r in records:
        assert r.content_type == MSGPACK_TYPE, r.system
        env = decode_envelope(r.payload)
        assert env["seq"] == int(r.custom["seq"]) and env["prio"] == r.custom["prio"]
        assert r.message_id == f"{env['agent']}:{env['seq']}"
        out.append(env)
    return out


def as_text(value: Any) -> str:
    """msgpack bin as the JSON form shows it: text, \\xNN for the bytes that are not UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} has no JSON form")


def argv_text(event: dict[str, Any]) -> list[str]:
    return [a if isinstance(a, str) else as_text(a) for a in event.get("argv") or []]


def exec_counts(events: list[dict[str, Any]], wanted: list[str]) -> Counter[str]:
    """How many exec events carry each wanted token in their argv."""
    want = set(wanted)
    found: Counter[str] = Counter()
    for e in events:
        if e.get("t") == "exec":
            for arg in argv_text(e):
                if arg in want:
                    found[arg] += 1
    return found


def check_sequence(records: list[Telemetry]) -> tuple[list[int], dict[int, int]]:
    """The distinct seqs received, sorted, with no gap from the first to the last; the
    duplicates (seq -> times) each byte-identical to its first arrival."""
    first: dict[int, bytes] = {}
    times: Counter[int] = Counter()
    for r in records:
        seq = int(r.custom["seq"])
        times[seq] += 1
        if seq in first:
            assert r.payload == first[seq], f"seq {seq} arrived twice with different bytes"
        else:
            first[seq] = r.payload
    seqs = sorted(first)
    assert seqs, "no telemetry"
    missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    assert missing == [], f"sequence gaps: {missing[:20]}"
    duplicates = {s: n for s, n in times.items() if n > 1}
    # The receiver's own check, on the messages saved as a back end saves them, agrees.
    report = verify_saved(records)
    (device,) = report["devices"]
    assert report["complete"] is True, report
    assert (device["batches"], device["first_seq"], device["last_seq"]) == (len(seqs), seqs[0], seqs[-1])
    assert device["duplicates"] == sum(n - 1 for n in duplicates.values())
    return seqs, duplicates


def verify_saved(records: list[Telemetry]) -> dict[str, Any]:
    """`micro-agent verify --json` on the records saved as JSON lines (docs/uplink.md,
    "Checking what arrived")."""
    import base64

    lines = []
    for r in records:
        system = {"iothub-connection-device-id": r.device_id,
                  "iothub-connection-module-id": r.module_id or "",
                  "content-type": r.content_type or ""}
        lines.append(json.dumps({"body_base64": base64.b64encode(r.payload).decode(),
                                 "properties": r.custom, "system_properties": system}))
    done = subprocess.run([sys.executable, "-m", "agent.cli", "verify", "--json", "-"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def loss_reasons(envs: list[dict[str, Any]]) -> dict[str, int]:
    """The outbox's and the sinks' drops the envelopes carry (by reason)."""
    found: Counter[str] = Counter()
    for env in envs:
        for reason, count in env["drops"].items():
            if reason.startswith(OUTBOX_REASONS) or reason.endswith(SINK_REASONS):
                found[reason] += count
    return dict(found)


# --- the twin at start --------------------------------------------------------------------------


def test_desired_properties_set_before_start_are_applied_and_reported_within_2s(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, live: list[LiveAgent]
) -> None:
    iothub.set_twin({"Process_Disabled": True, "Heartbeat_Disabled": False,
                     "Heartbeat_MessageFrequency": "High", "Login_CacheSize": 17})
    started = time.monotonic()
    a = start(live, tmp_path, module(iothub, hub_certs))
    a.until(lambda: iothub.reported.get("latest_state") == "success", 2.0, "latest_state reported")
    assert time.monotonic() - started <= 2.0
    reported = iothub.reported
    assert reported["latest_invalid_fields"] == []
    # Applied: the configuration and the collectors are the twin's, and say so.
    cfg = a.agent.config
    assert cfg.process.disabled and not cfg.heartbeat.disabled and cfg.login.cache_size == 17
    assert a.agent.collectors["Process"].collector.state.state == "disabled"
    assert a.agent.collectors["Heartbeat"].collector.state.state == "running"
    assert reported["Process_Disabled"] is True and reported["Login_CacheSize"] == 17
    assert reported["Heartbeat_MessageFrequency"] == "High"
    assert reported["collectors"]["Process"]["state"] == "disabled"
    assert reported["collectors"]["Heartbeat"]["state"] == "running"
    # The heartbeat's first snapshot went to the High lane, and from there to the hub.
    a.deliver()
    with_heartbeat = [env for env in envelopes(iothub.telemetry)
                      if any(e["t"] == "heartbeat" for e in env["events"])]
    assert with_heartbeat and all(env["prio"] == "High" for env in with_heartbeat)


def test_invalid_desired_value_at_start_is_reported_and_the_rest_applied(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, live: list[LiveAgent]
) -> None:
    iothub.set_twin({"Process_CacheSize": 0, "Upload_Format": "xml", "Login_CacheSize": 17})
    started = time.monotonic()
    a = start(live, tmp_path, module(iothub, hub_certs))
    a.until(lambda: "latest_state" in iothub.reported, 2.0, "latest_state reported")
    assert time.monotonic() - started <= 2.0
    reported = iothub.reported
    assert reported["latest_state"] == "failed"
    assert reported["latest_invalid_fields"] == ["Process_CacheSize", "Upload_Format"]
    reasons = reported["latest_invalid_reasons"]
    assert len(reasons) == 2 and reasons[0].startswith("Process_CacheSize: ")
    # An invalid field keeps its last good value (here the default); the valid one applies.
    assert a.agent.config.process.cache_size == 256 and reported["Process_CacheSize"] == 256
    assert a.agent.config.upload.format.value == "msgpack" and reported["Upload_Format"] == "msgpack"
    assert a.agent.config.login.cache_size == 17 and reported["Login_CacheSize"] == 17
    # The agent runs on: its Process collector collects and the hub gets the events.
    assert a.agent.collectors["Process"].collector.state.state == "running"
    (token,) = tokens("invalid-start", 1)
    a.run_while(echo([token]))
    a.deliver()
    assert exec_counts([e for env in envelopes(iothub.telemetry) for e in env["events"]],
                       [token]) == {token: 1}


# --- Process_Disabled by patch ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_process_disabled_patch_stops_process_events_within_2s_and_false_brings_them_back(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, live: list[LiveAgent]
) -> None:
    before, during, after = tokens("before", 5), tokens("during", 5), tokens("after", 5)
    a = start(live, tmp_path, module(iothub, hub_certs))
    a.connected()
    iothub.wait_for_reported(lambda r: r.get("latest_state") == "success", timeout=5)
    a.run_while(echo(before))

    patched = time.monotonic()
    iothub.set_desired({"Process_Disabled": True})
    took = a.until(lambda: iothub.reported.get("collectors", {}).get("Process", {}).get("state")
                   == "disabled", 2.0, "Process disabled and reported")
    assert took <= 2.0
    a.spin(max(0.0, patched + 2.0 - time.monotonic()))
    a.run_while(echo(during))  # from patch + 2 s on: never in any telemetry

    iothub.set_desired({"Process_Disabled": False})
    a.until(lambda: iothub.reported.get("collectors", {}).get("Process", {}).get("state")
            == "running", 2.0, "Process running again and reported")
    a.run_while(echo(after))
    a.deliver()

    events = [e for env in envelopes(iothub.telemetry) for e in env["events"]]
    assert exec_counts(events, before) == dict.fromkeys(before, 1)
    assert exec_counts(events, during) == {}
    assert exec_counts(events, after) == dict.fromkeys(after, 1)
    # The events of `before` were flushed when the collector stopped, not lost.
    assert loss_reasons(envelopes(iothub.telemetry)) == {}


# --- 200 commands -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_200_distinct_commands_all_arrive_decoded_with_consecutive_sequence_numbers(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, live: list[LiveAgent]
) -> None:
    wanted = tokens("cmd200", 200)
    a = start(live, tmp_path, module(iothub, hub_certs))
    a.connected()
    a.run_while(echo(wanted))
    a.deliver()
    records = iothub.telemetry
    envs = envelopes(records)
    seqs, duplicates = check_sequence(records)
    assert duplicates == {}  # no outage: each batch once
    assert seqs[0] == 0 and len(seqs) == len(records) >= 5  # 200 commands need several 4 KiB batches
    assert all(len(r.payload) <= 4096 for r in records)
    events = [e for env in envs for e in env["events"]]
    assert exec_counts(events, wanted) == dict.fromkeys(wanted, 1)
    mine = [e for e in events if e.get("t") == "exec" and set(argv_text(e)) & set(wanted)]
    assert a.agent.collectors["Process"].collector.state.source == "audit"
    assert all(e["hits"] == 1 and e["exe"] == "/usr/bin/echo" for e in mine), mine[:3]
    assert all(env["dev"] == MODULE[0] and env["mod"] == MODULE[1] for env in envs)
    assert a.uplink.status()["delivered"] == len(records) == a.outbox.counters().confirmed


# --- hub outage ---------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_hub_down_30s_while_commands_run_everything_arrives_without_gap_or_drop(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, live: list[LiveAgent]
) -> None:
    first, outage, later = tokens("pre", 10), tokens("outage", 120), tokens("post", 10)
    a = start(live, tmp_path, module(iothub, hub_certs))
    a.connected()
    a.run_while(echo(first))
    a.deliver()
    delivered_before = len(iothub.telemetry)

    iothub.stop()
    down_at = time.monotonic()
    depth_seen = 0
    thread = threading.Thread(target=echo(outage, pause=0.2))  # about 30 s of commands
    thread.start()
    next_interval = time.monotonic() + 5.0
    while thread.is_alive() or time.monotonic() - down_at < 30.0:
        a.turn()
        if time.monotonic() >= next_interval:  # intervals end while the hub is away
            a.end_intervals()
            next_interval = time.monotonic() + 5.0
        depth_seen = max(depth_seen, a.depth())
    thread.join()
    a.spin(1.0)
    a.end_intervals()
    a.spin(0.2)
    assert a.state().startswith("disconnected: "), a.state()
    assert len(iothub.telemetry) == delivered_before  # nothing got through
    depth_seen = max(depth_seen, a.depth())
    assert depth_seen >= 5, depth_seen  # the batches waited in the outbox

    iothub.start()
    a.connected(timeout=20)
    a.run_while(echo(later))
    a.deliver(timeout=60)

    records = iothub.telemetry
    envs = envelopes(records)
    seqs, duplicates = check_sequence(records)
    assert seqs[0] == 0
    events = [e for env in envs for e in env["events"]]
    wanted = first + outage + later
    assert exec_counts(events, wanted) == dict.fromkeys(wanted, 1)
    assert loss_reasons(envs) == {}
    assert {k: v for k, v in a.agent.dropped.items()
            if k.startswith(OUTBOX_REASONS) or k.endswith(SINK_REASONS)} == {}
    counters = a.outbox.counters()
    assert counters.confirmed == len(seqs)
    status = a.uplink.status()
    assert status["disconnects"] >= 1 and status["connects"] >= 2
    assert len(duplicates) <= WINDOW  # an orderly stop: at most what was in flight
    check_sends(iothub, records, seqs)


# --- micro-agent run, SIGKILL and restart ---------------------------------------------------


class Commands:
    """`/bin/echo TOKEN` about 40 times a second in a thread, each token stamped with the
    time it ran."""

    def __init__(self, tag: str) -> None:
        self.tag = f"{tag}-{uuid.uuid4().hex[:12]}"
        self.ran: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            token = f"{self.tag}-{i}"
            subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)
            self.ran.append((time.monotonic(), token))
            i += 1
            self._stop.wait(0.025)

    def between(self, t0: float, t1: float) -> list[str]:
        return [token for at, token in self.ran if t0 <= at <= t1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_agent(data: Path, config: Path, cs_file: Path, certs: Certificates) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "IOTHUB_CONNECTION_STRING"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data), "--config", str(config),
         "--connection-string-file", str(cs_file), "--ca-file", str(certs.ca.cert)],
        stderr=subprocess.PIPE, text=True, env=env,
    )


def agent_status(data: Path, pid: int) -> dict[str, Any]:
    """status.json, if the process `pid` wrote it (a killed run leaves its own)."""
    try:
        doc = json.loads((data / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("pid") == pid else {}


def wait_status(proc: subprocess.Popen[str], data: Path, predicate: Callable[[dict[str, Any]], bool],
                timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = agent_status(data, proc.pid)
        if doc and predicate(doc):
            return doc
        if proc.poll() is not None:
            pytest.fail(f"micro-agent run exited ({proc.returncode}) before {what}: "
                        f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s; status {doc.get('uplink')}")
        time.sleep(0.1)


def ready(doc: dict[str, Any]) -> bool:
    return bool(doc["uplink"]["state"] == "connected"
                and doc["collectors"]["Process"]["state"] == "running")


def drained(doc: dict[str, Any]) -> bool:
    return (all(d["count"] == 0 for d in doc["outbox"]["depth"].values())
            and doc["uplink"]["in_flight"] == 0)


def stored_seqs(data: Path) -> set[int]:
    """The seqs of the batch files in the outbox (`<prio>-<seq:020d>.batch`)."""
    return {int(p.stem.split("-")[1]) for p in (data / "outbox").glob("*.batch")}


@pytest.mark.timeout(150)
def test_sigkilled_agent_restarts_with_the_next_seq_and_resends_only_what_was_in_flight(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path
) -> None:
    cs_file = tmp_path / "connection_string"
    cs_file.write_text(iothub.identity(*MODULE).connection_string() + "\n")
    cs_file.chmod(0o600)
    config = tmp_path / "config.json"
    # Small batches and a small cache: a steady stream of commands makes batches all the time.
    config.write_text(json.dumps({**QUIET, **SMALL, "Process_CacheSize": 8}))
    data = tmp_path / "data"
    commands = Commands("kill")
    proc = run_agent(data, config, cs_file, hub_certs)
    procs = [proc]
    try:
        wait_status(proc, data, ready, 30, "run 1 connected")
        # A backlog to drain when the kill comes: the hub goes away for a while.
        iothub.wait_for_telemetry(2, timeout=20)
        iothub.stop()
        time.sleep(4.0)
        backlog_from = len(iothub.telemetry)
        iothub.start()
        # SIGKILL in the middle of the drain, a few messages after it began.
        deadline = time.monotonic() + 30
        while len(iothub.telemetry) < backlog_from + 3:
            assert time.monotonic() < deadline, "run 1 did not drain its backlog"
            assert proc.poll() is None
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(1.0)  # what was on the wire has arrived or never will
        run1 = list(iothub.telemetry)
        arrived1 = {int(r.custom["seq"]) for r in run1}
        run1_connections = max(p.connection for p in iothub.device_publishes())
        pending = stored_seqs(data)
        last_stored = max(arrived1 | pending)
        # Run 1 stored 0..last_stored: each batch either arrived or is still in the outbox.
        assert arrived1 | pending == set(range(last_stored + 1))
        assert pending, "the kill came after the backlog was gone: nothing to resend"

        proc = run_agent(data, config, cs_file, hub_certs)
        procs.append(proc)
        wait_status(proc, data, ready, 30, "run 2 connected")
        restarted_at = time.monotonic()
        time.sleep(3.0)
        commands.stop()
        time.sleep(1.0)  # the last commands' audit records
        wait_status(proc, data, drained, 30, "run 2 drained the outbox")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        commands.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    records = iothub.telemetry
    envs = envelopes(records)
    seqs, _ = check_sequence(records)
    assert seqs[0] == 0
    # Sequence numbers continue: run 2's first batch is last stored + 1, in a new boot.
    boots = sorted({env["boot"] for env in envs})
    assert len(boots) == 2 and boots[1] == boots[0] + 1
    run2_first = min(env["seq"] for env in envs if env["boot"] == boots[1])
    assert run2_first == last_stored + 1
    assert all(env["seq"] <= last_stored for env in envs if env["boot"] == boots[0])
    # The at-least-once bound (docs/uplink.md): at most one send per connection a batch was
    # in flight on. A batch in flight when run 1 lost the hub and again at the kill is sent
    # on three connections and may arrive three times.
    connections = check_sends(iothub, records, seqs, again_at_most=RESENT_AFTER_A_CRASH)
    # Run 2 sent again only what run 1 had not confirmed: batches still in the outbox at the
    # kill, and of those that had arrived, only the last RESENT_AFTER_A_CRASH run 1 sent (one
    # lane: send order is seq order). (A file still in the outbox is not always pending: a confirm logs
    # the removal in the state file before it unlinks the file, and the next open finishes
    # it; so `pending` may hold a confirmed batch or two.)
    resent = {seq for seq in seqs
              if seq <= last_stored and max(connections[seq]) > run1_connections}
    assert resent <= pending
    assert resent & arrived1 <= set(sorted(arrived1)[-RESENT_AFTER_A_CRASH:])
    # Everything run 2 saw arrived: the commands of its whole life.
    events = [e for env in envs for e in env["events"]]
    wanted = commands.between(restarted_at, float("inf"))
    assert len(wanted) > 20
    assert exec_counts(events, wanted) == dict.fromkeys(wanted, 1)
    final = json.loads((data / "status.json").read_text())
    assert final["uplink"]["last_seq"] == seqs[-1] and final["uplink"]["state"] == "closed"


# --- JSON ---------------------------------------------------------------------------------------


def json_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events as the JSON form shows them (bin as text, \\xNN for what is not UTF-8)."""
    return [json.loads(json.dumps(e, default=as_text)) for e in events]


def test_json_format_carries_the_same_events_as_the_msgpack_form_of_the_same_run(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, live: list[LiveAgent]
) -> None:
    wanted = tokens("json", 60)
    iothub.set_twin({"Upload_Format": "json"})
    a = start(live, tmp_path, module(iothub, hub_certs))
    a.connected()
    assert a.agent.config.upload.format.value == "json"
    # Run the commands, then end the intervals here, without a turn: the batches are in the
    # outbox, as msgpack envelopes, and not yet handed to the uplink.
    a.run_while(echo(wanted))
    a.until(lambda: a.depth() == 0 and a.uplink.status()["in_flight"] == 0, 10, "quiet")
    sent_before = len(iothub.telemetry)
    for lane in a.agent.lanes.values():
        a.agent.close_lane(lane)
    stored = {info.seq: a.outbox.read(info.id) for info in a.outbox.pending()}
    assert stored and all(b is not None for b in stored.values())
    as_msgpack = {seq: decode_envelope(b.payload) for seq, b in stored.items() if b is not None}
    a.until(lambda: a.depth() == 0 and a.uplink.status()["in_flight"] == 0, 30, "delivered")

    records = iothub.telemetry[sent_before:]
    assert records and all(r.content_type == JSON_TYPE for r in records)
    assert all(r.content_encoding == "utf-8" for r in records)
    assert all(r.system["iothub_interface_id"] == "urn:azureiot:Security:SecurityAgent:1"
               for r in records)
    by_seq: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        doc = json.loads(r.payload.decode("utf-8"))
        assert doc["seq"] == int(r.custom["seq"]) and doc["n"] == len(doc["events"])
        by_seq[doc["seq"]].append(doc)
    assert set(by_seq) == set(as_msgpack)
    for seq, docs in by_seq.items():
        docs.sort(key=lambda d: d.get("part", 1))
        env = as_msgpack[seq]
        # The same envelope, the same events in the same order, split or not.
        assert [e for d in docs for e in d["events"]] == json_events(env["events"])
        head = {k: v for k, v in env.items() if k not in ("events", "n", "drops")}
        assert all({k: d[k] for k in head} == head for d in docs)
        assert docs[0]["drops"] == env["drops"]
    # Compared by unique argv: the commands' events, each once, in both forms.
    from_json = exec_counts([e for docs in by_seq.values() for d in docs for e in d["events"]], wanted)
    from_msgpack = exec_counts([e for env in as_msgpack.values() for e in env["events"]], wanted)
    assert from_json == from_msgpack == dict.fromkeys(wanted, 1)
