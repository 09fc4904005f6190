"""IoT Hub uplink: what reaches the hub and what it costs, against the local stand-in
(tests/hub/: TLS through the gate, mosquitto), never Azure. The agent speaks IoT Hub's MQTT
itself (agent.uplink.mqtt, on paho-mqtt); its peer is the bare azure-iot-device SDK, which the
agent ran on before, sending the same bodies to the same stand-in.

Throughput (group uplink-throughput). The agent runs in this process with the Process
collector only (Process_CacheSize 4096, so the aggregator keeps every entry until the interval
ends). 2,000 distinct `/bin/echo TOKEN` commands run (200 under --benchmark-disable) and their
events wait in the aggregator; then every lane's interval ends and the clock starts: flush,
batches sealed and stored in the outbox, handed to the uplink's worker, published, confirmed. The figure
is the time from the interval's end to the last message's arrival at the hub, for msgpack and
JSON, at the default message size (245,760 bytes) and at 4 KiB (the billing unit, the
smallest Upload_MaxMessageBytes: many messages). Beside it, the bare SDK (an
IoTHubModuleClient in this process) sends the very bodies of the agent's msgpack 4 KiB run,
one send_message after the other: the uplink's own cost is the difference. Bytes per event are
the telemetry bodies' bytes over the events they carry (all exec events of the machine in that
time, not only the tokens). Same work: every token arrives exactly once in each agent run, and
the SDK peer delivers as many messages and bytes as the run it replays.

Memory (group uplink-rss). `micro-agent run` as a process with every collector on (the
defaults) and connected to the stand-in, beside a fresh Python process that only imports the
SDK, connects an IoTHubModuleClient to the same stand-in and waits. Each settles (20 s, 3 s
under --benchmark-disable) and VmRSS / VmHWM are read from /proc/PID/status; the table says
what the agent adds to the bare SDK. Both run from byte code, as installed: without
PYTHONDONTWRITEBYTECODE and with PYTHONPYCACHEPREFIX naming a cache that a first, unmeasured
run of each fills (with the sources compiled at every start, the agent paid about 2 MB for
compiling its own modules where the SDK's came as byte code from its installation); and with
-S and this process's module path, so that no start-up (.pth) file of the machine's
site-packages runs code in them.

    cd benchmarks && PYTHONPATH=/tmp/site python3 -m pytest bench_uplink.py [--benchmark-disable]

Needs root (the agent's audit source), mosquitto and openssl, and the stand-in's port
127.0.0.1:8883 free.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hub.broker import BrokerError, Certificates
from hub.hub import Hub, Telemetry

from agent.limits import DEFAULT_MAX_MESSAGE_BYTES

pytestmark = [
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]

COMMANDS = 2000
QUICK_COMMANDS = 200
SETTLE_S = 20.0
QUICK_SETTLE_S = 3.0
MODULE = ("bench-dev", "iot-micro-agent")
# Only the Process collector: the events under measure are the commands'.
ONLY_PROCESS = {
    f"{name}_Disabled": True
    for name in ("SystemInformation", "Baseline", "SBoM", "LocalUsers", "Firewall", "ListeningPorts",
                 "Heartbeat", "Statistics", "Login", "NetworkActivity")
}


def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


# ---------------------------------------------------------------------------------------------
# the stand-in


@pytest.fixture(scope="module")
def standin() -> Iterator[Hub]:
    if os.geteuid() != 0:
        skip_unless_ci("the agent's Process collector needs root (kernel audit)")
    for binary in ("mosquitto", "openssl"):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            skip_unless_ci(f"{binary} is not installed (apt-get install {binary})")
    work = Path(tempfile.mkdtemp(prefix="bench-uplink-"))
    certs = Certificates(work / "certs")
    hub = Hub(certs, workdir=work / "hub")
    try:
        hub.start()
    except BrokerError as err:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"the stand-in cannot start: {err}")
    try:
        yield hub
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def hub(standin: Hub) -> Hub:
    standin.reset(sessions=True)
    return standin


def connection_string(hub: Hub) -> str:
    return str(hub.identity(*MODULE).connection_string())


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Throughput:
    peer: str
    fmt: str
    max_bytes: int
    messages: int
    body_bytes: int
    events: int
    tokens: int
    seconds: float
    # The agent: from the interval's end to the end of the turn that sealed and stored every
    # batch (sends start during it); None for the bare SDK, which stores nothing.
    stored_s: float | None = None

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_event(self) -> float:
        return self.body_bytes / self.events if self.events else 0.0


@dataclass
class Memory:
    peer: str
    rss_kb: int
    hwm_kb: int
    settle_s: float
    notes: list[str] = field(default_factory=list)


_THROUGHPUT: list[Throughput] = []
_MEMORY: list[Memory] = []
# The agent's msgpack 4 KiB run's bodies, for the bare SDK to send again.
_REPLAY: list[bytes] = []
# (batches, rounds, agent's median messages/s, the bare SDK's) of test_uplink_drain_beside_the_bare_sdk
_DRAIN: list[tuple[str, int, int, float, float]] = []


@pytest.fixture(scope="module", autouse=True)
def table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not (_THROUGHPUT or _MEMORY or _DRAIN):
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            _write_table(reporter)
    else:
        _write_table(reporter)


def _write_table(reporter: Any) -> None:
    if _THROUGHPUT:
        reporter.write_sep("=", "uplink throughput: interval end -> last arrival at the stand-in")
        reporter.write_line("| peer | format | max bytes | messages | events | bytes/event | "
                            "seconds | of which sealing and storing | messages/s | events/s |")
        reporter.write_line("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in _THROUGHPUT:
            stored = "-" if t.stored_s is None else f"{t.stored_s:.3f}"
            reporter.write_line(
                f"| {t.peer} | {t.fmt} | {t.max_bytes} | {t.messages} | {t.events} | "
                f"{t.bytes_per_event:.1f} | {t.seconds:.3f} | {stored} | {t.messages_per_s:.0f} | "
                f"{t.events_per_s:.0f} |")
        agent = next((t for t in _THROUGHPUT if t.peer == "agent" and t.fmt == "msgpack"
                      and t.max_bytes == 4096), None)
        sdk = next((t for t in _THROUGHPUT if t.peer == "bare SDK"), None)
        if agent is not None and sdk is not None and agent.messages_per_s > 0:
            reporter.write_line(
                f"bare SDK / agent, messages/s at 4 KiB msgpack: "
                f"{sdk.messages_per_s / agent.messages_per_s:.2f}x")
    for how, n, rounds, agent_rate, sdk_rate in _DRAIN:
        reporter.write_sep("=", f"{how}, beside the bare SDK")
        reporter.write_line(f"{n} batches, median of {rounds} alternating rounds: agent "
                            f"{agent_rate:.0f} messages/s, bare SDK {sdk_rate:.0f} messages/s, "
                            f"agent / bare SDK {agent_rate / sdk_rate:.2f}x")
    if _MEMORY:
        reporter.write_sep("=", "RSS while connected to the stand-in")
        reporter.write_line("| peer | VmRSS MB | VmHWM MB | settled s | notes |")
        reporter.write_line("|---|---:|---:|---:|---|")
        for m in _MEMORY:
            reporter.write_line(f"| {m.peer} | {m.rss_kb / 1024:.1f} | {m.hwm_kb / 1024:.1f} | "
                                f"{m.settle_s:.0f} | {'; '.join(m.notes)} |")
        agent_m = next((m for m in _MEMORY if m.peer == "micro-agent run"), None)
        sdk_m = next((m for m in _MEMORY if m.peer == "bare SDK"), None)
        if agent_m is not None and sdk_m is not None:
            reporter.write_line(
                f"the agent adds {(agent_m.rss_kb - sdk_m.rss_kb) / 1024:.1f} MB RSS "
                f"({(agent_m.hwm_kb - sdk_m.hwm_kb) / 1024:.1f} MB at the peak) to the bare SDK")


# ---------------------------------------------------------------------------------------------
# throughput


class InProcessAgent:
    """The agent's loop in this process with the IoT Hub uplink (as `micro-agent run`)."""

    def __init__(self, data: Path, hub: Hub, config: dict[str, Any]) -> None:
        from agent import __version__
        from agent.collectors import Environment, build_collectors
        from agent.config import ConfigStore
        from agent.envelope import Identity
        from agent.outbox import Outbox
        from agent.pipeline import Agent
        from agent.uplink.identity import identity_from_fields, parse_connection_string
        from agent.uplink.iothub import IotHubUplink, UplinkOptions

        data.mkdir(parents=True, exist_ok=True)
        (data / "config.json").write_text(json.dumps(config))
        store = ConfigStore(str(data / "config.json"))
        cfg = store.config
        self.outbox = Outbox(data, cfg.outbox.max_bytes, cfg.iothub_module.message_timeout_minutes * 60)
        identity = identity_from_fields(parse_connection_string(connection_string(hub)),
                                        source="bench", ca_file=str(hub.certs.ca.cert))
        ident = Identity("bench-agent", __version__, identity.device_id, identity.module_id or "")
        # Reconnect quickly (nothing here disconnects); the rest as `micro-agent run`.
        self.uplink = IotHubUplink(identity, ident.agent, UplinkOptions(backoff_min_s=0.2, backoff_max_s=1.0),
                                   rng=random.Random(1))
        env = Environment(data_dir=data)
        self.agent = Agent(store, env, self.outbox, self.uplink, ident, build_collectors(env))
        self.uplink.attach(self.agent)
        self.agent.start()

    def until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s; {self.uplink.status()}")
            self.agent.turn(timeout=0.02)

    def idle(self) -> bool:
        depth = sum(d.count for d in self.outbox.depth().values())
        return depth == 0 and self.uplink.status()["in_flight"] == 0

    def close(self) -> None:
        self.agent.shutdown()


def run_commands(agent: InProcessAgent, tokens: list[str]) -> None:
    """The commands, while the loop turns; then 1 s more for their audit records."""
    def work() -> None:
        for token in tokens:
            subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        agent.agent.turn(timeout=0.02)
    thread.join()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        agent.agent.turn(timeout=0.02)


def count_tokens(records: list[Telemetry], fmt: str, wanted: set[str]) -> tuple[int, dict[str, int]]:
    """(events carried, how often each wanted token appears in an exec event's argv)."""
    from agent.envelope import decode_envelope

    events = 0
    seen: dict[str, int] = {}
    for r in records:
        if r.content_type == "application/json":
            doc = json.loads(r.payload)
        else:
            doc = decode_envelope(r.payload)
        events += len(doc["events"])
        for e in doc["events"]:
            if e.get("t") != "exec":
                continue
            for arg in e.get("argv") or []:
                text = arg if isinstance(arg, str) else bytes(arg).decode("utf-8", "replace")
                if text in wanted:
                    seen[text] = seen.get(text, 0) + 1
    return events, seen


@pytest.mark.benchmark(group="uplink-throughput")
@pytest.mark.parametrize(("fmt", "max_bytes"), [("msgpack", 4096), ("msgpack", DEFAULT_MAX_MESSAGE_BYTES),
                                                ("json", 4096), ("json", DEFAULT_MAX_MESSAGE_BYTES)])
def test_agent_throughput(benchmark: BenchmarkFixture, request: pytest.FixtureRequest, hub: Hub,
                          tmp_path: Path, fmt: str, max_bytes: int) -> None:
    n = QUICK_COMMANDS if quick(request) else COMMANDS
    run = uuid.uuid4().hex[:10]
    tokens = [f"bench-{run}-{i}" for i in range(n)]
    config = {**ONLY_PROCESS, "Upload_Format": fmt, "Upload_MaxMessageBytes": max_bytes,
              "Process_CacheSize": 4096}
    agent = InProcessAgent(tmp_path / "data", hub, config)
    try:
        agent.until(lambda: agent.uplink.status()["state"] == "connected", 20, "connected")
        run_commands(agent, tokens)
        agent.until(agent.idle, 30, "quiet before the interval ends")
        before = len(hub.telemetry)
        started: list[float] = []
        stored: list[float] = []

        def deliver() -> None:
            started.append(time.time())
            for lane in agent.agent.lanes.values():
                lane.deadline = 0.0  # the interval ends now, as at the loop's timer
            agent.agent.turn(timeout=0.0)  # every batch sealed and stored (and sending)
            stored.append(time.time())
            agent.until(agent.idle, 120, "delivered")

        benchmark.pedantic(deliver, rounds=1, iterations=1, warmup_rounds=0)  # type: ignore[no-untyped-call]
    finally:
        agent.close()
    records = hub.telemetry[before:]
    assert records, "nothing arrived"
    events, seen = count_tokens(records, fmt, set(tokens))
    # Same work: every command's event arrived exactly once.
    missing = [t for t in tokens if seen.get(t) != 1]
    assert missing == [], f"{len(missing)} tokens missing or repeated, e.g. {missing[:3]}"
    seconds = max(r.arrived for r in records) - started[0]
    result = Throughput("agent", fmt, max_bytes, len(records), sum(len(r.payload) for r in records),
                        events, len(tokens), seconds, stored[0] - started[0])
    _THROUGHPUT.append(result)
    if fmt == "msgpack" and max_bytes == 4096:
        _REPLAY[:] = [r.payload for r in records]
    benchmark.extra_info.update({
        "messages": result.messages, "events": events, "bytes": result.body_bytes,
        "stored_s": round(stored[0] - started[0], 3),
        "bytes_per_event": round(result.bytes_per_event, 1),
        "messages_per_s": round(result.messages_per_s), "events_per_s": round(result.events_per_s),
    })


@pytest.mark.benchmark(group="uplink-throughput")
def test_bare_sdk_throughput(benchmark: BenchmarkFixture, hub: Hub) -> None:
    if not _REPLAY:
        pytest.skip("needs the agent's msgpack 4 KiB run (test_agent_throughput) first")
    from azure.iot.device import IoTHubModuleClient, Message

    bodies = list(_REPLAY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = IoTHubModuleClient.create_from_connection_string(
            connection_string(hub), server_verification_cert=hub.certs.ca_pem)
        client.connect()
    started: list[float] = []
    try:
        def send() -> None:
            started.append(time.time())
            for i, body in enumerate(bodies):
                msg = Message(body, message_id=f"sdk:{i}",  # type: ignore[no-untyped-call]
                              content_type="application/msgpack")
                msg.custom_properties.update({"v": "1", "seq": str(i), "prio": "Low", "agent": "sdk"})
                client.send_message(msg)

        benchmark.pedantic(send, rounds=1, iterations=1, warmup_rounds=0)  # type: ignore[no-untyped-call]
        records = hub.wait_for_telemetry(len(bodies), timeout=30)
    finally:
        client.shutdown()
    # Same work: the same bodies, all arrived, in order.
    assert [r.payload for r in records] == bodies
    events, _ = count_tokens(records, "msgpack", set())
    seconds = max(r.arrived for r in records) - started[0]
    agent = next(t for t in _THROUGHPUT if t.fmt == "msgpack" and t.max_bytes == 4096)
    _THROUGHPUT.append(Throughput("bare SDK", "msgpack", 4096, len(records),
                                  sum(len(b) for b in bodies), events, agent.tokens, seconds))
    benchmark.extra_info.update({"messages": len(records), "events": events})


# ---------------------------------------------------------------------------------------------
# the send path alone


DRAIN_BATCHES, QUICK_DRAIN_BATCHES = 400, 100
DRAIN_ROUNDS, QUICK_DRAIN_ROUNDS = 7, 1


def drain_batch(i: int) -> bytes:
    """A core batch of 28 exec-like events (about 3 KB sealed): the 4 KiB case's size."""
    import msgpack

    events = [msgpack.packb({"t": "exec", "pid": 1000 + j, "ppid": 1, "uid": 0,
                             "path": "/bin/echo", "argv": ["/bin/echo", f"drain-{i}-{j}"],
                             "cwd": "/var/lib/iot-micro-agent", "ts": 1_700_000_000_000 + j})
              for j in range(28)]
    return b"\xdd" + len(events).to_bytes(4, "big") + b"".join(events)


@pytest.mark.benchmark(group="uplink-drain")
@pytest.mark.parametrize("while_sending", [False, True], ids=["filled-first", "stored-while-sending"])
def test_uplink_drain_beside_the_bare_sdk(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                                          hub: Hub, tmp_path: Path, while_sending: bool) -> None:
    """The uplink's own cost, without the collectors and the audit load around it: an outbox
    of N batches drained by IotHubUplink through the agent's loop (no collectors), then the
    bare SDK sending the same bodies one send_message after the other; rounds alternate and
    the medians are compared. Messages/s from the first pump (the SDK: the first send) to the
    last arrival at the stand-in. `while_sending`: the agent's clock starts before the batches are
    sealed and stored (in one go, as a turn that ends an interval stores them), so its figure
    includes sealing and storing (the outbox's fsyncs) while the sends start; the SDK's is
    sending alone, as in the other case."""
    from azure.iot.device import IoTHubModuleClient, Message

    from agent.collectors import Environment
    from agent.config import ConfigStore
    from agent.envelope import Identity, sealer
    from agent.outbox import Outbox
    from agent.pipeline import Agent
    from agent.uplink.identity import identity_from_fields, parse_connection_string
    from agent.uplink.iothub import IotHubUplink, UplinkOptions

    n = QUICK_DRAIN_BATCHES if quick(request) else DRAIN_BATCHES
    rounds = QUICK_DRAIN_ROUNDS if quick(request) else DRAIN_ROUNDS
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_text("{}")
    store = ConfigStore(str(data / "config.json"))
    outbox = Outbox(data, 1 << 30, 24 * 3600)
    identity = identity_from_fields(parse_connection_string(connection_string(hub)),
                                    source="bench", ca_file=str(hub.certs.ca.cert))
    ident = Identity("bench-agent", "0", identity.device_id, identity.module_id or "")
    uplink = IotHubUplink(identity, ident.agent, UplinkOptions(backoff_min_s=0.2, backoff_max_s=1.0),
                          rng=random.Random(1))
    agent = Agent(store, Environment(data_dir=data), outbox, uplink, ident, [])
    uplink.attach(agent)
    agent.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = IoTHubModuleClient.create_from_connection_string(
            str(hub.identity("bench-dev", "bare-sdk").connection_string()),
            server_verification_cert=hub.certs.ca_pem)
        client.connect()
    rates: dict[str, list[float]] = {"agent": [], "bare SDK": []}
    try:
        deadline = time.monotonic() + 20
        while uplink.status()["state"] != "connected":
            agent.turn(timeout=0.02)
            assert time.monotonic() < deadline, uplink.status()

        def one_round() -> None:
            raw = [drain_batch(i) for i in range(n)]
            before = len(hub.telemetry)
            started = time.time()
            if not while_sending:
                # The outbox is filled first (the uplink is not told: it would start
                # sending), then drained: the send path alone.
                listener, outbox.on_stored = outbox.on_stored, None
            for body in raw:
                outbox.put("Low", sealer(body, ident, "Low", ["Process"]), 28)
            if not while_sending:
                outbox.on_stored = listener
                bodies = [b.payload for b in (outbox.read(info.id) for info in outbox.pending())
                          if b is not None]
                before = len(hub.telemetry)
                started = time.time()
            while sum(d.count for d in outbox.depth().values()) or uplink.status()["in_flight"]:
                agent.turn(timeout=0.02)
            records = hub.wait_for_telemetry(before + n, timeout=30)[before:]
            if while_sending:
                bodies = [r.payload for r in sorted(records, key=lambda r: int(r.custom["seq"]))]
            # Same work: every batch arrived, as stored.
            assert sorted(r.payload for r in records) == sorted(bodies)
            assert len(bodies) == n
            rates["agent"].append(n / (max(r.arrived for r in records) - started))
            before = len(hub.telemetry)
            started = time.time()
            for i, body in enumerate(bodies):
                msg = Message(body, message_id=f"sdk:{i}",  # type: ignore[no-untyped-call]
                              content_type="application/msgpack")
                msg.custom_properties.update({"v": "1", "seq": str(i), "prio": "Low", "agent": "sdk"})
                client.send_message(msg)
            records = hub.wait_for_telemetry(before + n, timeout=30)[before:]
            assert [r.payload for r in records] == bodies
            rates["bare SDK"].append(n / (max(r.arrived for r in records) - started))

        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)  # type: ignore[no-untyped-call]
    finally:
        client.shutdown()
        agent.shutdown()
    agent_rate = statistics.median(rates["agent"])
    sdk_rate = statistics.median(rates["bare SDK"])
    _DRAIN.append(("stored while sending (sealing and storing in the agent's time)" if while_sending
                   else "the send path alone: an outbox of batches drained", n, rounds,
                   agent_rate, sdk_rate))
    benchmark.extra_info.update({"batches": n, "rounds": rounds,
                                 "agent_messages_per_s": [round(r) for r in rates["agent"]],
                                 "sdk_messages_per_s": [round(r) for r in rates["bare SDK"]],
                                 "ratio": round(agent_rate / sdk_rate, 3)})


# ---------------------------------------------------------------------------------------------
# memory


def vm_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in kB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def settle_and_measure(pid: int, seconds: float) -> tuple[int, int]:
    """Wait `seconds`, then the median VmRSS of five reads 0.2 s apart, and VmHWM."""
    time.sleep(seconds)
    samples = []
    for _ in range(5):
        samples.append(vm_kb(pid))
        time.sleep(0.2)
    rss = sorted(s[0] for s in samples)[2]
    return rss, max(s[1] for s in samples)


BARE_SDK = r"""
import sys, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from azure.iot.device import IoTHubModuleClient
client = IoTHubModuleClient.create_from_connection_string(
    sys.argv[1], server_verification_cert=open(sys.argv[2]).read())
client.connect()
print("connected", flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def bytecode_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of both RSS peers: byte code cached in a directory of this run."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "IOTHUB_CONNECTION_STRING")}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path_factory.mktemp("pycache"))
    # Both peers run with -S and this process's module path: the same modules, without the
    # code that start-up (.pth) files of the machine's site-packages may run (one on the
    # test machine imports certifi: 5 MB in each peer that the device's interpreter has not).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    return env


def bare_sdk(hub: Hub, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-S", "-c", BARE_SDK, connection_string(hub),
                             str(hub.certs.ca.cert)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "connected":
        proc.kill()
        proc.wait()
        raise AssertionError(f"the bare SDK did not connect: {line!r}")
    return proc


@pytest.mark.benchmark(group="uplink-rss")
def test_rss_bare_sdk_connected(benchmark: BenchmarkFixture, request: pytest.FixtureRequest,
                                hub: Hub, bytecode_env: dict[str, str]) -> None:
    settle = QUICK_SETTLE_S if quick(request) else SETTLE_S
    first = bare_sdk(hub, bytecode_env)  # compiles what it imports
    first.kill()
    first.wait()
    before = len(hub.gate.decisions())
    proc = bare_sdk(hub, bytecode_env)
    try:
        result: list[tuple[int, int]] = []
        benchmark.pedantic(lambda: result.append(settle_and_measure(proc.pid, settle)),  # type: ignore[no-untyped-call]
                           rounds=1, iterations=1, warmup_rounds=0)
    finally:
        proc.kill()
        proc.wait()
    # Same work: one accepted connection of that identity.
    assert any(d[1] for d in hub.gate.decisions()[before:])
    rss, hwm = result[0]
    _MEMORY.append(Memory("bare SDK", rss, hwm, settle, ["IoTHubModuleClient connected, idle"]))
    benchmark.extra_info.update({"vmrss_kb": rss, "vmhwm_kb": hwm})


def connected_agent(hub: Hub, data: Path, config: Path, cs_file: Path, env: dict[str, str]
                    ) -> subprocess.Popen[str]:
    """`micro-agent run` until its status says connected."""
    proc = subprocess.Popen(
        [sys.executable, "-S", "-m", "agent.cli", "run", "--data-dir", str(data),
         "--config", str(config), "--connection-string-file", str(cs_file),
         "--ca-file", str(hub.certs.ca.cert)],
        stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            status = json.loads((data / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("running") and status.get("uplink", {}).get("state") == "connected":
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"not connected within 60 s: {status.get('uplink')}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM; its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return err


@pytest.mark.benchmark(group="uplink-rss")
def test_rss_micro_agent_run_every_collector_connected(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, hub: Hub, tmp_path: Path,
    bytecode_env: dict[str, str]
) -> None:
    settle = QUICK_SETTLE_S if quick(request) else SETTLE_S
    cs_file = tmp_path / "connection_string"
    cs_file.write_text(connection_string(hub) + "\n")
    cs_file.chmod(0o600)
    config = tmp_path / "config.json"
    config.write_text("{}")  # the defaults: every collector on
    data = tmp_path / "data"
    first = connected_agent(hub, data, config, cs_file, bytecode_env)  # compiles what it runs
    assert stop(first) is not None and first.returncode == 0
    (data / "status.json").unlink()
    proc = connected_agent(hub, data, config, cs_file, bytecode_env)
    try:
        result: list[tuple[int, int]] = []
        benchmark.pedantic(lambda: result.append(settle_and_measure(proc.pid, settle)),  # type: ignore[no-untyped-call]
                           rounds=1, iterations=1, warmup_rounds=0)
        status = json.loads((data / "status.json").read_text())
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    # Same work: connected, and every collector it has is running (the not-built ones say so).
    states = {name: c["state"] for name, c in status["collectors"].items()}
    assert status["uplink"]["state"] == "connected"
    assert states.get("Process") == "running", states
    running = sorted(n for n, s in states.items() if s == "running")
    other = sorted(f"{n}: {s}" for n, s in states.items() if s != "running")
    rss, hwm = result[0]
    _MEMORY.append(Memory("micro-agent run", rss, hwm, settle,
                          [f"running: {', '.join(running)}"] + ([f"not: {', '.join(other)}"] if other else [])))
    benchmark.extra_info.update({"vmrss_kb": rss, "vmhwm_kb": hwm, "collectors": states})
