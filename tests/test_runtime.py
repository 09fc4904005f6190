"""The agent runtime (agent.pipeline) in this process, on the real kernel: configuration
patches applied live, aggregation, lanes and batch sizes, sequence numbers across restarts.

Each test runs an Agent over a temporary data directory with the local delivery uplink, turns
its loop while it makes real processes and connections, stops it (as SIGTERM does) and decodes
what was delivered. The periodic inventory collectors are disabled unless a test is about
them: they are slow and beside the point here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kernel_audit import EXCLUSION_RULES, pid_alive

from agent import __version__
from agent.collectors import Environment, build_collectors
from agent.config import FIELDS, ConfigStore, Frequency
from agent.envelope import Identity, decode_envelope
from agent.native.audit_netlink import RULE_KEY
from agent.outbox import Outbox
from agent.pipeline import STATUS_EVERY_S, Agent
from agent.uplink.files import LocalDelivery

pytestmark = [pytest.mark.live, pytest.mark.root]

QUIET = {
    "SystemInformation_Disabled": True,
    "Baseline_Disabled": True,
    "SBoM_Disabled": True,
    "LocalUsers_Disabled": True,
    "Firewall_Disabled": True,
    "ListeningPorts_Disabled": True,
    "Heartbeat_Disabled": True,
    "Statistics_Disabled": True,
    "Login_Disabled": True,
    "NetworkActivity_Disabled": True,
    "Peripheral_Disabled": True,
    "LogCollector_Disabled": True,
}


def audit_state() -> tuple[str, str]:
    """What the agent must leave as it found it: the kernel's audit enabled flag, owner and
    backlog_limit, and the rules. An owner whose process is gone counts as none: the agent
    takes a dead owner's place (an earlier run killed) and leaves audit unowned."""
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    rules = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout
    keep = []
    for line in status.splitlines():
        name, _, value = line.partition(" ")
        if name == "pid" and value.isdigit() and int(value) and not pid_alive(int(value)):
            line = "pid 0"
        if name in ("enabled", "pid", "backlog_limit"):
            keep.append(line)
    return "\n".join(keep), rules


def audit_state_before_start() -> tuple[str, str]:
    """audit_state() once the rules with the agent's key that an earlier killed run left are
    removed: the agent removes them at its start, as it should, so a test that compares the
    state before and after the agent sets that state up without them."""
    subprocess.run(["auditctl", "-D", "-k", RULE_KEY], capture_output=True, check=True)
    # The agent's exclusions carry no key (tests/kernel_audit.py); a killed run's go too.
    for rule in EXCLUSION_RULES:
        subprocess.run(["auditctl", "-d", *rule.split()[1:]], capture_output=True, check=False)
    return audit_state()


class Harness:
    def __init__(self, data: Path, config_path: Path) -> None:
        self.data = data
        self.store = ConfigStore(str(config_path))
        self.env = Environment(data_dir=data)
        cfg = self.store.config
        self.outbox = Outbox(data, cfg.outbox.max_bytes, cfg.iothub_module.message_timeout_minutes * 60)
        self.agent = Agent(self.store, self.env, self.outbox, LocalDelivery(data / "delivered"),
                           Identity("test-agent", __version__, "dev1", "iot-micro-agent"),
                           build_collectors(self.env))

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.agent.turn(timeout=0.05)

    def run_while(self, work: Callable[[], None]) -> None:
        """Runs work() in a thread while the loop turns, then turns 1.5 s more."""
        thread = threading.Thread(target=work)
        thread.start()
        while thread.is_alive():
            self.agent.turn(timeout=0.05)
        thread.join()
        self.spin(1.5)

    def patch(self, patch: dict[str, Any]) -> None:
        """As the twin's desired-patch handler does: from another thread, via call_soon."""
        done = threading.Event()

        def apply() -> None:
            self.agent.apply(self.store.apply_patch(patch))
            done.set()

        threading.Thread(target=lambda: self.agent.call_soon(apply)).start()
        while not done.is_set():
            self.agent.turn(timeout=0.05)


@contextmanager
def agent(tmp_path: Path, config: dict[str, Any], name: str = "data") -> Iterator[Harness]:
    before = audit_state_before_start()
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps({**QUIET, **config}))
    harness = Harness(tmp_path / name, config_path)
    harness.agent.start()
    try:
        yield harness
    finally:
        harness.agent.shutdown()
        # The kernel's audit is as it was: rules removed, enable flag and owner restored.
        assert audit_state() == before


def delivered(data: Path) -> list[dict[str, Any]]:
    """Every delivered envelope, in sequence order."""
    envelopes = [decode_envelope(p.read_bytes()) for p in sorted((data / "delivered").glob("*.msgpack"))]
    return sorted(envelopes, key=lambda e: e["seq"])


def events_of(data: Path) -> list[dict[str, Any]]:
    return [event for env in delivered(data) for event in env["events"]]


def run_commands(argvs: list[list[str]]) -> Callable[[], None]:
    def work() -> None:
        for argv in argvs:
            subprocess.run(argv, check=True)

    return work


def execs_with(events: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    return [e for e in events if e["t"] == "exec" and token in [str(a) for a in e.get("argv") or []]]


# ---------------------------------------------------------------------------------------------


def test_500_runs_of_one_command_are_one_entry_with_hit_count_500(tmp_path: Path) -> None:
    token = f"agg-{uuid.uuid4()}"
    with agent(tmp_path, {}) as h:
        assert h.agent.collectors["Process"].collector.state.source == "audit"
        h.run_while(run_commands([["/bin/true", token]] * 500))
    (entry,) = execs_with(events_of(h.data), token)
    assert entry["hits"] == 500
    assert entry["argv"] == ["/bin/true", token] and entry["exe"] == "/usr/bin/true"
    assert entry["first"] <= entry["last"]


def test_process_disabled_stops_events_within_1s_and_false_restarts_them(tmp_path: Path) -> None:
    before, during, after = (f"{name}-{uuid.uuid4()}" for name in ("before", "during", "after"))
    with agent(tmp_path, {"NetworkActivity_Disabled": False}) as h:
        network = h.agent.collectors["NetworkActivity"].collector
        table = network.table  # type: ignore[attr-defined]
        h.run_while(run_commands([["/bin/echo", before]]))
        h.patch({"Process_Disabled": True})
        h.spin(1.0)
        assert h.agent.collectors["Process"].collector.state.state == "disabled"
        h.run_while(run_commands([["/bin/echo", during]]))
        h.patch({"Process_Disabled": False})
        h.spin(1.0)
        h.run_while(run_commands([["/bin/echo", after]]))
        # Only the collector whose settings changed was touched.
        assert network.table is table  # type: ignore[attr-defined]
    events = events_of(h.data)
    assert len(execs_with(events, before)) == 1
    assert execs_with(events, during) == []
    assert len(execs_with(events, after)) == 1


def test_message_frequency_moves_a_collector_to_that_lane(tmp_path: Path) -> None:
    token = f"lane-{uuid.uuid4()}"
    with agent(tmp_path, {"Process_MessageFrequency": "High", "Heartbeat_Disabled": False}) as h:
        h.run_while(run_commands([["/bin/echo", token]]))
    envelopes = delivered(h.data)
    (with_exec,) = [e for e in envelopes if execs_with(e["events"], token)]
    assert with_exec["prio"] == "High" and "Process" in with_exec["coll"]
    heartbeat = [e for e in envelopes if any(ev["t"] == "heartbeat" for ev in e["events"])]
    assert [e["prio"] for e in heartbeat] == ["Low"]


def test_upload_max_message_bytes_bounds_every_batch(tmp_path: Path) -> None:
    tokens = [f"size-{i}-{uuid.uuid4()}" for i in range(300)]
    with agent(tmp_path, {"Upload_MaxMessageBytes": 8192}) as h:
        h.run_while(run_commands([["/bin/echo", t] for t in tokens]))
    files = list((h.data / "delivered").glob("*.msgpack"))
    assert len(files) > 1
    assert max(f.stat().st_size for f in files) <= 8192
    events = events_of(h.data)
    assert all(len(execs_with(events, t)) == 1 for t in tokens)


def test_cache_size_bounds_entries_and_evictions_are_counted(tmp_path: Path) -> None:
    tokens = [f"cache-{i}-{uuid.uuid4()}" for i in range(20)]
    with agent(tmp_path, {"Process_CacheSize": 4}) as h:
        h.run_while(run_commands([["/bin/echo", t] for t in tokens]))
        stats = h.agent.collectors["Process"].collector.stats()
    events = events_of(h.data)
    assert all(len(execs_with(events, t)) == 1 for t in tokens)  # nothing lost
    assert stats["evicted"] >= 16


def test_process_mode_picks_the_source(tmp_path: Path) -> None:
    for mode, source, src in ((2, "cnproc", "cnproc"), (3, "polling", "proc")):
        token = f"mode{mode}-{uuid.uuid4()}"
        # The shell stays (two commands: no exec of the last) long enough for polling to see it.
        with agent(tmp_path, {"Process_Mode": mode, "Process_PollingInterval": 50_000},
                   name=f"mode{mode}") as h:
            assert h.agent.collectors["Process"].collector.state.source == source
            h.run_while(run_commands([["/bin/sh", "-c", "sleep 0.5; true", token]]))
        found = execs_with(events_of(h.data), token)
        assert found and all(e["src"] == src for e in found), (mode, found)


def test_invalid_values_are_listed_and_the_previous_value_stays(tmp_path: Path) -> None:
    with agent(tmp_path, {"Process_CacheSize": 64}) as h:
        h.patch({"Process_CacheSize": "huge", "Process_Nonsense": 1, "Upload_Format": {"a": 1}})
        assert h.store.latest_state == "failed"
        assert {"Process_CacheSize", "Process_Nonsense", "Upload_Format"} <= set(h.store.latest_invalid_fields)
        assert h.store.config.process.cache_size == 64
        h.spin(STATUS_EVERY_S + 0.5)  # the next status file
        status = json.loads((h.data / "status.json").read_text())
        assert status["config"]["latest_state"] == "failed"
        h.patch({"Process_CacheSize": 32, "Process_Nonsense": None, "Upload_Format": None})
        assert h.store.latest_state == "success" and h.store.config.process.cache_size == 32


def test_system_information_override_and_disabled_baseline_check(tmp_path: Path) -> None:
    with agent(tmp_path, {"SystemInformation_Disabled": False, "Baseline_Disabled": False,
                          "SystemInformation_HardwareVendor": "Acme Test Boards",
                          "Baseline_ChecksDisabled": "BL-ACC-001"}) as h:
        h.spin(0.2)
    events = events_of(h.data)
    (info,) = [e for e in events if e["t"] == "sysinfo"]
    assert info["hwvendor"] == "Acme Test Boards"
    ids = {e["id"] for e in events if e["t"] == "baseline"}
    assert "BL-ACC-001" not in ids and len(ids) >= 30


def test_sequence_numbers_continue_across_restarts(tmp_path: Path) -> None:
    seqs: list[int] = []
    for round_ in range(3):
        with agent(tmp_path, {"Heartbeat_Disabled": False}) as h:
            h.spin(0.2)
        seqs = [e["seq"] for e in delivered(h.data)]
        assert seqs == list(range(len(seqs))) and len(seqs) >= round_ + 1
    assert len(seqs) >= 3
    boots = {e["boot"] for e in delivered(h.data)}
    assert len(boots) == 3


CONNECTOR = """
import socket, sys, time
listeners = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    listeners.append(s)
print(" ".join(str(s.getsockname()[1]) for s in listeners), flush=True)
for s in listeners:
    c = socket.create_connection(s.getsockname())
    a, _ = s.accept()
    c.sendall(b"x" * 1000)
    a.recv(4096)
    time.sleep(2.5)  # alive across a sock_diag snapshot
    c.close()
    a.close()
"""


@pytest.mark.timeout(120)
def test_network_activity_finds_connections_through_audit_and_sock_diag(tmp_path: Path) -> None:
    # The connections come from a child: audit never reports its own daemon's system calls.
    ports: set[int] = set()

    def connect_all() -> None:
        child = subprocess.run([sys.executable, "-c", CONNECTOR], capture_output=True,
                               text=True, check=True)
        ports.update(int(p) for p in child.stdout.split())

    with agent(tmp_path, {"NetworkActivity_Disabled": False}) as h:
        h.run_while(connect_all)
        h.spin(2.5)
    assert len(ports) == 5
    events = events_of(h.data)
    audit_out = {e["rport"] for e in events if e["t"] == "net" and e.get("dir") == "out" and e.get("rport") in ports}
    assert audit_out == ports
    opened = {e["rport"] for e in events if e["t"] == "conn" and e.get("op") == "open" and e.get("dir") == "out"
              and e.get("rport") in ports}
    assert opened == ports
    closed = [e for e in events if e["t"] == "conn" and e.get("op") == "close" and e.get("rport") in ports]
    assert closed and all(e["tx"] == 1000 for e in closed)


def test_reported_document_says_what_runs_and_what_it_counted(tmp_path: Path) -> None:
    token = f"rep-{uuid.uuid4()}"
    with agent(tmp_path, {"Process_CacheSize": 300}) as h:
        h.run_while(run_commands([["/bin/echo", token]]))
        doc = h.agent.reported_document()
        h.patch({"Process_CacheSize": -1})
        failed = h.agent.reported_document()
    assert doc["latest_state"] == "success" and doc["latest_invalid_fields"] == []
    assert doc["Process_CacheSize"] == 300 and doc["agent_version"] == __version__
    assert doc["collectors"]["Process"] == {"state": "running", "reason": "owner", "source": "audit"}
    assert doc["collectors"]["SBoM"] == {"state": "disabled"}
    assert doc["collectors"]["FileSystem"] == {
        "state": "running", "source": "inotify", "reason": "no paths (FileSystem_Paths is empty)"}
    assert doc["counters"]["collected"]["Process"] >= 1
    assert failed["latest_state"] == "failed" and failed["latest_invalid_fields"] == ["Process_CacheSize"]
    assert failed["Process_CacheSize"] == 300
    json.dumps(doc)  # a twin takes JSON


PERIODIC = {
    "SystemInformation": {"sysinfo", "netif"},
    "LocalUsers": {"user", "group"},
    "SBoM": {"pkg"},
    "Baseline": {"baseline"},
    "Heartbeat": {"heartbeat"},
    "Statistics": {"stats"},
    "ListeningPorts": {"listen"},
}
NO_AUDIT = {"Process_Disabled": True}


@pytest.mark.parametrize("name", sorted(PERIODIC))
def test_each_periodic_collector_follows_disabled_and_message_frequency_live(
    name: str, tmp_path: Path
) -> None:
    """Started with its defaults, then patched live (as the twin does): to High, then
    disabled. Its events go to the lane it is in when it takes each snapshot, and none after
    it is disabled (the patch restarts only this collector, and a restart snapshots at once)."""
    types = PERIODIC[name]
    with agent(tmp_path, {**NO_AUDIT, f"{name}_Disabled": False}) as h:
        h.spin(0.2)
        h.patch({f"{name}_MessageFrequency": "High"})
        h.spin(0.2)
        h.patch({f"{name}_Disabled": True})
        h.spin(0.2)
        assert h.agent.collectors[name].collector.state.state == "disabled"
        h.agent.close_lane(h.agent.lanes[Frequency.HIGH])  # the High interval ends
        h.agent.close_lane(h.agent.lanes[Frequency.LOW])
        h.agent.close_lane(h.agent.lanes[Frequency.MEDIUM])
        h.spin(0.1)
        count = len(delivered(h.data))
        h.patch({"Heartbeat_Disabled": False} if name != "Heartbeat" else {"Statistics_Disabled": False})
        h.spin(0.2)
    envelopes = delivered(h.data)
    mine = [e for e in envelopes if any(ev["t"] in types for ev in e["events"])]
    default = FIELDS[f"{name}_MessageFrequency"].default
    prios = sorted({e["prio"] for e in mine})
    assert default is not Frequency.HIGH and prios == sorted({"High", Frequency(default).value})
    # Nothing of it after it was disabled.
    assert not [e for e in envelopes[count:] if any(ev["t"] in types for ev in e["events"])]


def test_message_frequency_patched_live_moves_the_next_events(tmp_path: Path) -> None:
    with agent(tmp_path, {**NO_AUDIT, "Heartbeat_Disabled": False}) as h:
        h.spin(0.2)
        h.patch({"Heartbeat_MessageFrequency": "High"})
        h.spin(0.2)
    prios = [e["prio"] for e in delivered(h.data) if any(ev["t"] == "heartbeat" for ev in e["events"])]
    # The first snapshot went with Low; the restart on the patch took a snapshot into High.
    assert sorted(prios) == ["High", "Low"]


def test_every_system_information_override_and_a_disabled_baseline_group(tmp_path: Path) -> None:
    overrides = {
        "SystemInformation_HardwareVendor": ("hwvendor", "Acme"),
        "SystemInformation_HardwareModel": ("hwmodel", "Board 7"),
        "SystemInformation_HardwareSerialNumber": ("hwserial", "SN-0042"),
        "SystemInformation_FirmwareVendor": ("fwvendor", "Acme Firmware"),
        "SystemInformation_FirmwareVersion": ("fwver", "1.2.3"),
    }
    config = {**NO_AUDIT, "SystemInformation_Disabled": False, "Baseline_Disabled": False,
              "Baseline_GroupsDisabled": "SSH,Kernel"}
    config.update({name: value for name, (_, value) in overrides.items()})
    with agent(tmp_path, config) as h:
        h.spin(0.2)
    events = events_of(h.data)
    (info,) = [e for e in events if e["t"] == "sysinfo"]
    assert {key: info.get(key) for key, _ in overrides.values()} == dict(overrides.values())
    groups = {e["group"] for e in events if e["t"] == "baseline"}
    assert groups and not groups & {"SSH", "Kernel"} and "Accounts" in groups


def kernel_audit_status(name: str) -> int:
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    (value,) = [line.split()[1] for line in status.splitlines() if line.split()[0] == name]
    return int(value)


AUDITCTL_FLAG = {"enabled": "-e", "backlog_limit": "-b"}


@contextmanager
def kernel_audit_set_to(name: str, value: int) -> Iterator[None]:
    """The kernel's audit `enabled` or `backlog_limit` at a known value for the test (whatever
    an earlier run left there: a killed owner leaves audit enabled and its backlog_limit
    raised), and back to what it was afterwards."""
    found = kernel_audit_status(name)
    subprocess.run(["auditctl", AUDITCTL_FLAG[name], str(value)], capture_output=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["auditctl", AUDITCTL_FLAG[name], str(found)], capture_output=True,
                       check=True)


def test_audit_backlog_limit_and_own_if_free(tmp_path: Path) -> None:
    # As the owner the agent raises a lower backlog_limit to Audit_BacklogLimit, and puts the
    # one it found back when it stops (the harness checks that) ...
    with kernel_audit_set_to("backlog_limit", 64):
        with agent(tmp_path, {"Audit_BacklogLimit": 4321}, name="backlog") as h:
            assert kernel_audit_status("backlog_limit") == 4321
            assert h.agent.collectors["Process"].collector.state.source == "audit"
        assert kernel_audit_status("backlog_limit") == 64
    # ... and never lowers a higher one.
    with kernel_audit_set_to("backlog_limit", 10_000), \
            agent(tmp_path, {"Audit_BacklogLimit": 4321}, name="higher") as h:
        assert kernel_audit_status("backlog_limit") == 10_000
        assert h.agent.collectors["Process"].collector.state.source == "audit"
    # Audit is free (no auditd) but the agent may not take it. With audit off, nothing comes to
    # the multicast group: Auto falls to cn_proc ...
    with kernel_audit_set_to("enabled", 0), \
            agent(tmp_path, {"Audit_OwnIfFree": False}, name="notown") as h:
        state = h.agent.collectors["Process"].collector.state
        assert state.source == "cnproc" and "audit" in state.reason
    # ... with audit on (and nobody owning it), the agent reads the multicast group.
    with kernel_audit_set_to("enabled", 1), \
            agent(tmp_path, {"Audit_OwnIfFree": False}, name="notown-on") as h:
        state = h.agent.collectors["Process"].collector.state
        assert state.source == "audit" and "taking ownership is off" in state.reason


def test_login_use_pam_reports_pam_records(tmp_path: Path) -> None:
    with agent(tmp_path, {"Login_Disabled": False, "Login_UsePAM": True}, name="pam") as h:
        assert h.agent.collectors["Login"].collector.state.source == "utmp+audit"
        h.run_while(run_commands([["su", "-s", "/bin/sh", "-c", "true", "nobody"]]))
    auth = [e for e in events_of(h.data) if e["t"] == "auth"]
    assert auth, "su's PAM records (USER_START, CRED_ACQ, ...) did not arrive"
    with agent(tmp_path, {"Login_Disabled": False, "Login_UsePAM": False}, name="nopam") as h:
        assert h.agent.collectors["Login"].collector.state.source == "utmp"
        h.run_while(run_commands([["su", "-s", "/bin/sh", "-c", "true", "nobody"]]))
    assert not [e for e in events_of(h.data) if e["t"] == "auth"]


@pytest.mark.timeout(180)
def test_priority_intervals_send_each_lane_at_its_interval(tmp_path: Path) -> None:
    token = f"interval-{uuid.uuid4()}"
    with agent(tmp_path, {"CollectorsCore_PriorityIntervals": "1,1,1"}) as h:
        h.run_while(run_commands([["/bin/echo", token]]))
        started = time.monotonic()
        while time.monotonic() - started < 70 and not any((h.data / "delivered").glob("*.msgpack")):
            h.agent.turn(timeout=0.5)
        sent_before_stop = [decode_envelope(p.read_bytes()) for p in (h.data / "delivered").glob("*.msgpack")]
    assert sent_before_stop, "nothing was sent within the 1-minute interval"
    assert any(execs_with(e["events"], token) for e in sent_before_stop)


@pytest.mark.timeout(120)
def test_network_activity_devices_keeps_the_connections_of_those_interfaces(tmp_path: Path) -> None:
    results = {}
    for devices in ("lo", "nosuchif0"):
        ports: set[int] = set()

        def connect_all(ports: set[int] = ports) -> None:
            child = subprocess.run([sys.executable, "-c", CONNECTOR], capture_output=True,
                                   text=True, check=True)
            ports.update(int(p) for p in child.stdout.split())

        with agent(tmp_path, {"NetworkActivity_Disabled": False, "NetworkActivity_Devices": devices},
                   name=devices) as h:
            reason = h.agent.collectors["NetworkActivity"].collector.state.reason
            h.run_while(connect_all)
            h.spin(2.5)
        conns = [e for e in events_of(h.data) if e["t"] == "conn" and e.get("rport") in ports]
        results[devices] = (reason, conns)
    reason, conns = results["lo"]
    assert "devices lo:" in reason and conns
    assert all(e["laddr"] == "127.0.0.1" for e in conns)
    reason, conns = results["nosuchif0"]
    assert "no interface named nosuchif0" in reason and conns == []
