"""The parts of the agent's loop (agent.runtime), each alone and without the kernel: the drop
ledger, the lanes, reconfiguration, the status writer and the reported document. The Agent
here runs the agent's own collectors only (Heartbeat, Statistics: no kernel source), over a
real outbox and the local delivery directory. tests/test_runtime.py runs it all on the real
kernel."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent import __version__
from agent.collectors import Environment, build_collectors
from agent.collectors.agent_state import HeartbeatCollector, StatisticsCollector
from agent.collectors.audit_source import BUFFER_SHARE, buffer_filling, socket_memory
from agent.config import CollectorState, ConfigStore, Frequency
from agent.envelope import DropLedger, Identity, decode_envelope, sealer
from agent.native.aggregate import Aggregator
from agent.outbox import Outbox
from agent.pipeline import GATHER_CHECK_S, GATHER_MAX_S, GATHER_S, Agent
from agent.runtime.drops import DropTotals
from agent.runtime.lanes import PriorityLane, lane_batch_bytes
from agent.runtime.reconfigure import Changes, Running, changes_of
from agent.runtime.reported import reported_document
from agent.runtime.status import REFRESH_S, StatusWriter
from agent.uplink.files import LocalDelivery

IDENT = Identity("test-agent", __version__, "dev1", "iot-micro-agent")
HOUR = 3600.0


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        yield ob


def store_with(tmp_path: Path, config: dict[str, Any]) -> ConfigStore:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return ConfigStore(str(path))


# --- the drop ledger --------------------------------------------------------------------------


def test_each_increase_is_counted_once_for_the_envelope_and_the_totals(outbox: Outbox) -> None:
    drops = DropTotals(outbox)
    drops.observe("Process", {"sink_full": 3, "lost": 0})
    drops.observe("Process", {"sink_full": 3, "lost": 0})  # nothing new
    drops.observe("Audit", {"lost": 2})
    assert outbox.drops.peek() == {"Process.sink_full": 3, "Audit.lost": 2}
    outbox.drops.take()  # an envelope reported them
    drops.observe("Process", {"sink_full": 5, "lost": 1})
    drops.observe("Audit", {"lost": 2})
    assert outbox.drops.peek() == {"Process.sink_full": 2, "Process.lost": 1}
    assert drops.totals() == {"Process.sink_full": 5, "Process.lost": 1, "Audit.lost": 2}


def test_a_counter_that_went_back_is_the_new_base(outbox: Outbox) -> None:
    drops = DropTotals(outbox)
    drops.observe("High", {"dropped_full": 10})
    drops.observe("High", {"dropped_full": 4})  # a new sink: counts from 4
    drops.observe("High", {"dropped_full": 6})
    assert drops.totals() == {"High.dropped_full": 12}
    assert outbox.drops.peek() == {"High.dropped_full": 12}


def test_the_outbox_ledger_is_looked_up_at_each_use(outbox: Outbox) -> None:
    # The outbox replaces its ledger when it rolls a failed removal back.
    drops = DropTotals(outbox)
    drops.observe("Login", {"utmp_dropped": 1})
    outbox.drops = DropLedger({"kept": 1})
    drops.observe("Login", {"utmp_dropped": 3})
    assert outbox.drops.peek() == {"kept": 1, "Login.utmp_dropped": 2}


# --- lanes ------------------------------------------------------------------------------------


def too_large_event(lane: PriorityLane) -> None:
    """One event larger than a batch: the lane's sink drops it (dropped_encode)."""
    agg = Aggregator("none", cache_size=16, accept=("test",))
    event = {"t": "test", "ts": 1, "x": "y" * (lane.batch_bytes + 100)}
    lane.spill(agg.add(msgpack.packb([event]), lane.sink))


def test_a_lane_drops_never_go_back_across_a_resize(outbox: Outbox) -> None:
    lane = PriorityLane(Frequency.HIGH, outbox, IDENT, 1024, 60.0)
    too_large_event(lane)
    assert lane.drops() == {"dropped_full": 0, "dropped_encode": 1}
    assert not lane.resize(1024)
    assert lane.resize(2048) and lane.batch_bytes == 2048
    assert lane.drops() == {"dropped_full": 0, "dropped_encode": 1}
    too_large_event(lane)
    assert lane.drops() == {"dropped_full": 0, "dropped_encode": 2}


def test_a_shorter_interval_ends_the_running_one_no_later(outbox: Outbox) -> None:
    lane = PriorityLane(Frequency.LOW, outbox, IDENT, 4096, 300.0)
    lane.start_interval(1000.0)
    assert lane.deadline == 1300.0
    lane.set_interval(60.0, 1010.0)
    assert lane.deadline == 1070.0
    lane.set_interval(600.0, 1020.0)  # longer: the running interval keeps its end
    assert lane.deadline == 1070.0
    lane.start_interval(1070.0)
    assert lane.deadline == 1670.0


# --- reconfiguration --------------------------------------------------------------------------


def test_changes_name_exactly_the_collectors_whose_section_changed(tmp_path: Path) -> None:
    store = store_with(tmp_path, {})
    collectors = {c.name: c for c in build_collectors(Environment(data_dir=tmp_path))}
    assert changes_of(store.apply_patch({"Heartbeat_MessageFrequency": "High"}), collectors) == \
        Changes(batch_size=False, outbox_bounds=False, intervals=False, collectors=("Heartbeat",))
    audit = changes_of(store.apply_patch({"Audit_BacklogLimit": 1234}), collectors)
    assert audit.collectors == tuple(sorted(n for n, c in collectors.items()
                                            if getattr(c, "uses_audit", False)))
    assert set(audit.collectors) >= {"Process", "NetworkActivity", "Login"}
    both = changes_of(store.apply_patch({"Upload_MaxMessageBytes": 8192,
                                         "Outbox_MaxBytes": 1 << 22,
                                         "CollectorsCore_PriorityIntervals": "1,2,3",
                                         "Process_CacheSize": 7}), collectors)
    assert both == Changes(batch_size=True, outbox_bounds=True, intervals=True,
                           collectors=("Process",))
    same = changes_of(store.apply_patch({"Process_CacheSize": 7}), collectors)
    assert not same and same.collectors == ()
    # A collector the agent does not have is not named.
    assert changes_of(store.apply_patch({"Process_CacheSize": 8}), {}).collectors == ()


def own_agent(tmp_path: Path, config: dict[str, Any]) -> Agent:
    """An Agent with the agent's own collectors only: no kernel source."""
    store = store_with(tmp_path, config)
    env = Environment(data_dir=tmp_path / "data")
    env.data_dir.mkdir()
    cfg = store.config
    outbox = Outbox(env.data_dir, cfg.outbox.max_bytes,
                    cfg.iothub_module.message_timeout_minutes * 60)
    return Agent(store, env, outbox, LocalDelivery(env.data_dir / "delivered"), IDENT,
                 [HeartbeatCollector(env), StatisticsCollector(env)])


def delivered(agent: Agent) -> list[dict[str, Any]]:
    files = sorted((agent.env.data_dir / "delivered").glob("*.msgpack"))
    return [decode_envelope(p.read_bytes()) for p in files]


def test_a_patch_restarts_exactly_the_collector_it_changed(tmp_path: Path) -> None:
    agent = own_agent(tmp_path, {})
    agent.start()
    try:
        heartbeat = agent.collectors["Heartbeat"]
        statistics = agent.collectors["Statistics"]
        stats_state, stats_lane = statistics.collector.state, statistics.lane
        assert heartbeat.lane is agent.lanes[Frequency.LOW]
        agent.apply(agent.store.apply_patch({"Heartbeat_MessageFrequency": "High",
                                             "Outbox_MaxBytes": 1 << 22,
                                             "IothubModule_MessageTimeout": 5}))
        assert heartbeat.lane is agent.lanes[Frequency.HIGH]
        assert agent.lanes[Frequency.HIGH].collectors == ["Heartbeat"]
        assert "Heartbeat" not in agent.lanes[Frequency.LOW].collectors
        # Statistics was not touched: the same state object, the same lane.
        assert statistics.collector.state is stats_state and statistics.lane is stats_lane
        assert (agent.outbox.max_bytes, agent.outbox.timeout_ms) == (1 << 22, 5 * 60_000)
        agent.apply(agent.store.apply_patch({"Heartbeat_Disabled": True}))
        assert heartbeat.lane is None and heartbeat.collector.state.state == "disabled"
        assert agent.lanes[Frequency.HIGH].collectors == []
        assert statistics.collector.state is stats_state
    finally:
        agent.shutdown()
    # Heartbeat snapshotted at the start (Low) and at its restart (High); none after disabled.
    prios = [e["prio"] for e in delivered(agent) if any(ev["t"] == "heartbeat" for ev in e["events"])]
    assert sorted(prios) == ["High", "Low"]


class BrokenHeartbeat(HeartbeatCollector):
    """A collector whose start raises, as one whose source is missing may."""

    def start(self) -> CollectorState:
        raise OSError(19, "No such device")


def test_a_collector_that_cannot_start_is_unavailable_and_the_others_run(tmp_path: Path) -> None:
    agent = own_agent(tmp_path, {})
    env = agent.env
    broken = BrokenHeartbeat(env)
    agent.collectors["Heartbeat"] = Running(broken)
    agent.start()
    try:
        assert broken.state.state == "unavailable" and "No such device" in broken.state.reason
        assert agent.collectors["Heartbeat"].lane is None and broken.lane is None
        assert agent.lanes[Frequency.LOW].collectors == ["Statistics"]
        assert agent.collectors["Statistics"].collector.state.state == "running"
    finally:
        agent.shutdown()


def test_a_new_message_size_resizes_every_lane_and_an_interval_change_shortens_them(
    tmp_path: Path,
) -> None:
    agent = own_agent(tmp_path, {})
    agent.start()
    try:
        before = {f: lane.deadline for f, lane in agent.lanes.items()}
        agent.apply(agent.store.apply_patch({"Upload_MaxMessageBytes": 8192,
                                             "CollectorsCore_PriorityIntervals": "1,1,1"}))
        expected = lane_batch_bytes(agent.config, IDENT)
        assert all(lane.batch_bytes == expected for lane in agent.lanes.values())
        assert all(lane.interval_s == 60.0 for lane in agent.lanes.values())
        assert all(lane.deadline <= min(before[f], time.monotonic() + 60.0)
                   for f, lane in agent.lanes.items())
    finally:
        agent.shutdown()


# --- the Agent's drops, Statistics and the reported document ----------------------------------


def test_the_envelope_statistics_and_reported_document_count_the_same_drops(tmp_path: Path) -> None:
    agent = own_agent(tmp_path, {"Statistics_MessageFrequency": "High"})
    agent.start()
    try:
        high = agent.lanes[Frequency.HIGH]
        too_large_event(high)
        too_large_event(high)
        agent.account_drops()
        agent.account_drops()  # seen already: nothing more
        assert agent.dropped == {"High.dropped_encode": 2}
        assert agent.statistics()["dropped"] == {"High.dropped_encode": 2}
        # A twin property name cannot hold a dot (agent.config.reported).
        assert agent.reported_document()["counters"]["dropped"] == {"High_dropped_encode": 2}
        # The Statistics event of the next snapshot carries them too.
        agent.close_lane(high)
    finally:
        agent.shutdown()
    envelopes = delivered(agent)
    reported = sum(e["drops"].get("High.dropped_encode", 0) for e in envelopes)
    assert reported == 2  # each drop in exactly one envelope
    stats = [ev for e in envelopes for ev in e["events"] if ev["t"] == "stats"]
    assert stats[-1]["dropped"] == {"High.dropped_encode": 2}


def test_reported_document_from_what_runs(tmp_path: Path, outbox: Outbox) -> None:
    store = store_with(tmp_path, {"Heartbeat_MessageFrequency": "High"})
    env = Environment(data_dir=tmp_path)
    heartbeat = HeartbeatCollector(env)
    heartbeat.configure(store.config)
    heartbeat.state = heartbeat.start()
    statistics = StatisticsCollector(env)  # never started: disabled
    lane = PriorityLane(Frequency.HIGH, outbox, IDENT, lane_batch_bytes(store.config, IDENT), 60)
    lane.collectors.append("Heartbeat")
    heartbeat.collect(1, lane)
    lane.close_interval()
    doc = reported_document(store.config, {}, {"Heartbeat": heartbeat, "Statistics": statistics},
                            {"High.dropped_full": 4}, outbox)
    assert doc["Heartbeat_MessageFrequency"] == "High"
    assert doc["collectors"]["Heartbeat"]["state"] == "running"
    assert doc["collectors"]["Statistics"] == {"state": "disabled"}
    assert doc["counters"]["collected"] == {"Heartbeat": 1, "Statistics": 0}
    assert doc["counters"]["dropped"] == {"High_dropped_full": 4}
    assert doc["counters"]["outbox"]["written"] == 1
    assert doc["outbox_depth"] == 1 and doc["agent_version"] == __version__
    json.dumps(doc)
    # The counters the status file has read already are the ones reported, not read again.
    given = reported_document(store.config, {}, {"Heartbeat": heartbeat, "Statistics": statistics},
                              {}, outbox, stats={"Heartbeat": {"collected": 7}, "Statistics": {}})
    assert given["counters"]["collected"] == {"Heartbeat": 7, "Statistics": 0}


# --- the status file --------------------------------------------------------------------------


def test_status_file_rewritten_only_when_it_changed(tmp_path: Path) -> None:
    """A document that differs from the last one written only in `updated` leaves the file
    as it is, until REFRESH_S after that one; any other change, and the last document, are
    written at once."""
    path = tmp_path / "status.json"
    writer = StatusWriter(path, started=1000.0)

    def doc(updated: float, collected: int, running: bool = True) -> dict[str, Any]:
        return {"updated": int(updated), "running": running,
                "collectors": {"Heartbeat": {"counters": {"collected": collected}}}}

    def on_disk() -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    assert writer.write(doc(2000, 1)) and on_disk() == doc(2000, 1)
    inode = path.stat().st_ino
    assert not writer.write(doc(2002, 1))
    assert on_disk()["updated"] == 2000 and path.stat().st_ino == inode
    # A counter moved: written, with its time.
    assert writer.write(doc(2004, 2)) and on_disk() == doc(2004, 2)
    # Nothing moved for REFRESH_S: written again, so that `updated` shows the agent lives.
    assert not writer.write(doc(2004 + REFRESH_S - 1, 2))
    assert writer.write(doc(2004 + REFRESH_S, 2)) and on_disk()["updated"] == 2004 + REFRESH_S
    # The last document is written even when only `updated` moved.
    assert writer.write(doc(2070, 2), final=True) and on_disk()["updated"] == 2070
    # `updated` is added to the compared text, also to a document that holds nothing else.
    assert writer.write({"updated": 2071}, final=True) and on_disk() == {"updated": 2071}
    assert writer.write(doc(2072, 2)) and on_disk() == doc(2072, 2)
    # A nested dict changed in place after it was written is still seen as a change.
    live = doc(3000, 5)
    assert writer.write(live)
    live["collectors"]["Heartbeat"]["counters"]["collected"] = 6
    live["updated"] = 3002
    assert writer.write(live) and on_disk() == live


def test_status_document_rates_and_file(tmp_path: Path, outbox: Outbox) -> None:
    store = store_with(tmp_path, {})
    env = Environment(data_dir=tmp_path)
    heartbeat = HeartbeatCollector(env)
    heartbeat.configure(store.config)
    heartbeat.state = heartbeat.start()
    lane = PriorityLane(Frequency.LOW, outbox, IDENT, lane_batch_bytes(store.config, IDENT), 60)
    writer = StatusWriter(tmp_path / "status.json", started=1000.0)

    def document(now: float) -> dict[str, Any]:
        return writer.document(now=now, running=True, config_state={"latest_state": "success"},
                               uplink={"kind": "test"}, collectors={"Heartbeat": heartbeat},
                               frequencies={"Heartbeat": Frequency.LOW}, outbox=outbox,
                               reported={"agent_version": __version__},
                               stats={"Heartbeat": heartbeat.stats()})

    first = document(2000.0)
    assert first["collectors"]["Heartbeat"]["events_per_s"] == 0.0
    for ts in range(4):
        heartbeat.collect(ts, lane)  # 4 events in the next 2 s
    second = document(2002.0)
    entry = second["collectors"]["Heartbeat"]
    assert entry["events_per_s"] == 2.0 and entry["counters"]["collected"] == 4
    assert entry["state"] == "running" and entry["frequency"] == "Low"
    assert (second["started"], second["updated"], second["running"]) == (1000, 2002, True)
    assert second["outbox"]["depth"]["Low"] == {"count": 0, "bytes": 0}
    assert second["outbox"]["pending_drops"] == {}
    writer.write(second)
    assert json.loads((tmp_path / "status.json").read_text()) == json.loads(json.dumps(second))
    writer.write(first, final=True)
    assert json.loads((tmp_path / "status.json").read_text())["updated"] == 2000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("status")) == \
        ["status.json"]


def test_the_agent_writes_its_status_and_the_last_one_says_stopped(tmp_path: Path) -> None:
    agent = own_agent(tmp_path, {})
    agent.start()
    try:
        agent.turn(timeout=0.01)
        status = json.loads((agent.env.data_dir / "status.json").read_text())
        assert status["running"] is True
        assert set(status["collectors"]) == {"Heartbeat", "Statistics"}
        assert status["reported"]["agent_version"] == __version__
    finally:
        agent.shutdown()
    status = json.loads((agent.env.data_dir / "status.json").read_text())
    assert status["running"] is False and status["uplink"]["kind"] == "local"


def test_the_loop_gathers_after_a_busy_wake_up_as_long_as_its_sources_allow(tmp_path: Path) -> None:
    """After a turn that found a source readable the loop lets the sockets gather before the
    next: 50 ms, or what the busy source's callback says its socket can wait (the audit
    socket), within 50 ms to 0.25 s (GATHER_CHECK_S); the shortest of the busy sources counts.
    A call from another thread ends the wait at once."""
    agent = own_agent(tmp_path, {})
    agent.start()
    pairs = [socket.socketpair() for _ in range(2)]
    answers: dict[int, float | None] = {}
    read_at = [0.0]  # when the last callback returned

    def reader(sock: socket.socket, i: int) -> Any:
        def read() -> float | None:
            sock.recv(16)
            read_at[0] = time.monotonic()
            return answers[i]
        return read

    try:
        for i, (ours, _) in enumerate(pairs):
            agent.env.watch(ours.fileno(), reader(ours, i))
        agent.turn(timeout=0.01)
        cases = [((None, None), GATHER_S), ((10.0, None), GATHER_S), ((10.0, 10.0), GATHER_CHECK_S),
                 ((0.12, 10.0), 0.12), ((0.001, 10.0), GATHER_S)]
        for said, expected in cases:
            answers.update(enumerate(said))
            for _, theirs in pairs:
                theirs.send(b"x")
            agent.turn(timeout=1.0)
            gathers = agent._coalesce_until - read_at[0]
            assert expected <= gathers < expected + 0.02, (said, gathers)
            time.sleep(max(0.0, agent._coalesce_until - time.monotonic()))
        # Gathering GATHER_CHECK_S now: a call from another thread 20 ms in runs at once.
        answers.update({0: 10.0, 1: 10.0})
        for _, theirs in pairs:
            theirs.send(b"x")
        agent.turn(timeout=1.0)
        ran: list[float] = []
        start = time.monotonic()
        threading.Timer(0.02, lambda: agent.call_soon(lambda: ran.append(time.monotonic()))).start()
        agent.turn(timeout=1.0)
        assert ran and ran[0] - start < 0.15, ran
    finally:
        for ours, theirs in pairs:
            agent.env.unwatch(ours.fileno())
            ours.close()
            theirs.close()
        agent.shutdown()


def test_a_source_that_tells_when_its_socket_fills_gathers_longer_and_is_drained_when_it_does(
        tmp_path: Path) -> None:
    """A source whose watch has `filling` may gather up to GATHER_MAX_S; the loop asks it every
    GATHER_CHECK_S of the wait, and drains at once when it says its socket fills, or when
    another source becomes readable. Without `filling` the gather stays within
    GATHER_CHECK_S."""
    agent = own_agent(tmp_path, {})
    agent.start()
    ours, theirs = socket.socketpair()
    asked: list[float] = []
    fills = [False]
    read_at = [0.0]

    def read() -> float:
        ours.recv(16)
        read_at[0] = time.monotonic()
        return 10.0

    def filling() -> bool:
        asked.append(time.monotonic())
        return fills[0]

    try:
        agent.env.watch(ours.fileno(), read, filling)
        agent.turn(timeout=0.01)
        theirs.send(b"x")
        agent.turn(timeout=1.0)
        assert GATHER_MAX_S <= agent._coalesce_until - read_at[0] < GATHER_MAX_S + 0.02
        start = time.monotonic()
        agent.turn(timeout=0.01)  # waits out the whole gather, asking as it goes
        waited = time.monotonic() - start
        assert GATHER_MAX_S - 0.05 <= waited < GATHER_MAX_S + 0.1, waited
        assert len(asked) == round(GATHER_MAX_S / GATHER_CHECK_S) - 1, asked
        # The socket fills: the first check ends the gather.
        theirs.send(b"x")
        agent.turn(timeout=1.0)
        fills[0] = True
        asked.clear()
        start = time.monotonic()
        agent.turn(timeout=0.01)
        waited = time.monotonic() - start
        assert len(asked) == 1 and GATHER_CHECK_S - 0.02 <= waited < GATHER_CHECK_S + 0.1, waited
        # Another source readable during the gather ends it at once (its own bound: an inotify
        # event's actor window, a short-lived process's /proc entry); the gathering one is not.
        other, other_peer = socket.socketpair()
        try:
            agent.env.watch(other.fileno(), lambda: other.recv(16))
            fills[0] = False
            theirs.send(b"x")
            agent.turn(timeout=1.0)
            theirs.send(b"x")  # readable, but gathering: it does not end the wait
            threading.Timer(0.1, lambda: other_peer.send(b"y")).start()
            start = time.monotonic()
            agent.turn(timeout=0.01)
            waited = time.monotonic() - start
            assert 0.08 <= waited < GATHER_CHECK_S, waited
        finally:
            agent.env.unwatch(other.fileno())
            other.close()
            other_peer.close()
        # Watched again without `filling`: back to GATHER_CHECK_S at most.
        agent.env.watch(ours.fileno(), read)
        theirs.send(b"x")
        agent.turn(timeout=1.0)
        assert GATHER_CHECK_S <= agent._coalesce_until - read_at[0] < GATHER_CHECK_S + 0.02
    finally:
        agent.env.unwatch(ours.fileno())
        ours.close()
        theirs.close()
        agent.shutdown()


def test_buffer_filling_reads_the_kernels_count_of_a_real_socket() -> None:
    """buffer_filling: a quarter of the receive buffer queued, as the kernel counts it
    (SO_MEMINFO), on a real datagram socket (UDP on the loopback: its queue is bounded by the
    receive buffer alone)."""
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        ours.bind(("127.0.0.1", 0))
        theirs.connect(ours.getsockname())
        memory = socket_memory(ours)
        assert memory is not None and memory[0] == 0 and memory[1] >= 65536
        assert not buffer_filling(ours)
        theirs.setblocking(False)
        sent = 0
        while not buffer_filling(ours):
            theirs.send(b"x" * 1024)
            sent += 1
            assert sent < 1000, "never filling"
        queued, limit = socket_memory(ours) or (0, 0)
        assert queued * BUFFER_SHARE >= limit > (queued - 4096) * BUFFER_SHARE
        while ours.recv(2048, socket.MSG_DONTWAIT):
            if not buffer_filling(ours):
                break
        assert not buffer_filling(ours)
    finally:
        ours.close()
        theirs.close()


def test_local_delivery_rotates_the_oldest_files(tmp_path: Path) -> None:
    """The embedded default's directory: one file per batch, named by its sequence number; the
    oldest files go beyond max_files or max_bytes (counted in `rotated`); a new delivery
    (a restart) finds the files and their size on disk, and a batch delivered again under its
    name (after a crash between the write and the confirm) is one file, counted once."""
    outbox = Outbox(tmp_path / "outbox", 16 << 20, 3600)
    directory = tmp_path / "delivered"

    def put(n: int) -> None:
        for i in range(n):
            events = [{"t": "x", "ts": i, "pad": "p" * 100}]
            stored = outbox.put("High", sealer(msgpack.packb(events), IDENT, "High", ["Test"]),
                                 events=1)
            assert stored is not None

    def on_disk() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(directory.iterdir())}

    try:
        delivery = LocalDelivery(directory, max_files=3)
        put(5)
        delivery.pump(outbox)
        files = on_disk()
        assert len(files) == 3 and delivery.rotated == 2 and delivery.delivered == 5
        assert [int(name.split("-")[0]) for name in files] == [2, 3, 4]  # the newest three
        status = delivery.status()
        assert status["files"] == 3 and status["bytes"] == sum(files.values())

        # A restart finds them; a batch delivered again is written over its own file.
        again = LocalDelivery(directory, max_files=3)
        assert again.status()["bytes"] == sum(files.values())
        newest = max(files)
        again._write(newest, (directory / newest).read_bytes())
        assert on_disk() == files and again.status()["bytes"] == sum(files.values())
        assert again.status()["files"] == 3

        # The byte bound: room for two of these files.
        size = max(files.values())
        small = LocalDelivery(directory, max_files=100, max_bytes=2 * size + size // 2)
        put(1)
        small.pump(outbox)
        after = on_disk()
        assert len(after) == 2 and small.rotated == 2 and max(after) > newest
        assert small.status()["bytes"] == sum(after.values())
    finally:
        outbox.close()
