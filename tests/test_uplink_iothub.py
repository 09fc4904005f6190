"""The IoT Hub uplink (agent.uplink.iothub, agent.uplink.identity) against the stand-in
(tests/hub/): the real azure-iot-device SDK over real TLS through mosquitto.

Most tests run an Agent in this process with no collectors and put batches into its outbox
themselves (real envelopes, real outbox files), so that what the hub must receive is known
exactly; the loop turns as `micro-agent run` turns it. The last tests run `micro-agent run`
as a process. docs/uplink.md describes the behaviour checked here.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hub.broker import Certificates
from hub.gate import Publish
from hub.hub import _TELEMETRY as TELEMETRY_TOPIC
from hub.hub import Hub, Telemetry, parse_property_bag

from agent import __version__
from agent.collectors import Environment
from agent.config import COLLECTORS, ConfigStore
from agent.envelope import JSON_TYPE, MSGPACK_TYPE, Identity, decode_envelope, encode_batch, sealer
from agent.outbox import Outbox
from agent.pipeline import Agent
from agent.record import replace
from agent.uplink.connection import backoff_delay
from agent.uplink.identity import (
    HubIdentity,
    IdentityError,
    identity_from_fields,
    load_identity,
    parse_connection_string,
)
from agent.uplink.iothub import IotHubUplink, UplinkOptions

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

MODULE = ("dev1", "iot-micro-agent")
AGENT_ID = "agent-under-test"
ALL_OFF = {f"{name}_Disabled": True for name in COLLECTORS}
FAST = UplinkOptions(backoff_min_s=0.2, backoff_max_s=1.0, connect_timeout_s=15.0,
                     call_timeout_s=15.0, report_check_s=0.2, close_grace_s=5.0)


def hub_identity(cs: str, certs: Certificates, **kwargs: Any) -> HubIdentity:
    return identity_from_fields(parse_connection_string(cs), source="test",
                                ca_file=str(certs.ca.cert), **kwargs)


class HubAgent:
    """An Agent with no collectors, the IoT Hub uplink and a real outbox."""

    def __init__(self, data: Path, identity: HubIdentity, config: dict[str, Any] | None = None,
                 options: UplinkOptions = FAST, uplink_kwargs: dict[str, Any] | None = None) -> None:
        data.mkdir(parents=True, exist_ok=True)
        config_path = data / "config.json"
        config_path.write_text(json.dumps({**ALL_OFF, **(config or {})}))
        self.data = data
        self.store = ConfigStore(str(config_path))
        cfg = self.store.config
        self.outbox = Outbox(data, cfg.outbox.max_bytes, cfg.iothub_module.message_timeout_minutes * 60)
        self.ident = Identity(AGENT_ID, __version__, identity.device_id, identity.module_id or "")
        self.uplink = IotHubUplink(identity, AGENT_ID, options, rng=random.Random(7),
                                   **(uplink_kwargs or {}))
        self.agent = Agent(self.store, Environment(data_dir=data), self.outbox, self.uplink,
                           self.ident, [])
        self.agent.start()
        self.uplink.attach(self.agent)
        self.turns = 0
        self.longest_turn = 0.0
        self.closed = False

    def turn(self) -> None:
        started = time.monotonic()
        self.agent.turn(timeout=0.02)
        self.turns += 1
        self.longest_turn = max(self.longest_turn, time.monotonic() - started)

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

    def state(self) -> str:
        return str(self.uplink.status()["state"])

    def connected(self, timeout: float = 15.0) -> None:
        self.until(lambda: self.state() == "connected", timeout, "connected")

    def put(self, prio: str, events: list[dict[str, Any]]) -> int:
        info = self.outbox.put(prio, sealer(msgpack.packb(events, use_bin_type=True), self.ident,
                                            prio, ["Test"]), events=len(events))
        assert info is not None
        return info.seq

    def telemetry(self, hub: Hub, n: int, timeout: float = 10.0) -> list[Telemetry]:
        """Turns the loop until the hub has n messages; all of them."""
        self.until(lambda: len(hub.telemetry) >= n, timeout, f"{n} messages at the hub")
        return hub.telemetry

    def depth(self) -> int:
        return sum(d.count for d in self.outbox.depth().values())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.agent.shutdown()


@pytest.fixture
def agents() -> Iterator[list[HubAgent]]:
    made: list[HubAgent] = []
    yield made
    for a in made:
        a.close()


def start(agents: list[HubAgent], tmp_path: Path, identity: HubIdentity, **kwargs: Any) -> HubAgent:
    a = HubAgent(tmp_path / f"data{len(agents)}", identity, **kwargs)
    agents.append(a)
    return a


def module(iothub: Hub, certs: Certificates) -> HubIdentity:
    return hub_identity(iothub.identity(*MODULE).connection_string(), certs)


def seqs_of(records: list[Telemetry]) -> list[int]:
    return [int(r.custom["seq"]) for r in records]


# --- connect, twin, reported ------------------------------------------------------------------


def test_module_connection_string_connects_reads_applies_and_reports_the_twin(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    iothub.set_twin({"Process_CacheSize": 100, "Upload_Format": "json"},
                    {"stale_key_of_an_old_run": 1})
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()
    assert iothub.gate.decisions()[-1] == ("dev1/iot-micro-agent", True, "SAS token valid")
    # Applied: the effective configuration is the twin's.
    assert a.agent.config.process.cache_size == 100
    assert a.agent.config.upload.format.value == "json"
    reported = iothub.wait_for_reported(lambda r: "latest_state" in r, timeout=5)
    assert reported["Process_CacheSize"] == 100 and reported["Upload_Format"] == "json"
    assert reported["latest_state"] == "success" and reported["latest_invalid_fields"] == []
    assert reported["agent_version"] == __version__
    assert "stale_key_of_an_old_run" not in reported  # removed by the first patch
    # Subscribe, then read (a patch after the subscription is pushed): one GET, one report.
    assert iothub.twin_requests == 1
    assert len(iothub.reported_patches) == 1
    status = a.uplink.status()
    assert status["kind"] == "iothub" and status["identity"] == "dev1/iot-micro-agent"


def test_desired_patch_is_applied_and_reported_within_1s(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()
    iothub.wait_for_reported(lambda r: "latest_state" in r, timeout=5)
    for value in (64, 65, 66):
        iothub.set_desired({"Process_CacheSize": value})
        took = a.until(lambda v=value: iothub.reported.get("Process_CacheSize") == v,  # type: ignore[misc]
                       1.0, f"Process_CacheSize {value} reported")
        assert took < 1.0
        assert a.agent.config.process.cache_size == value
    # An invalid value keeps the last good one and is reported as failed, within 1 s too.
    iothub.set_desired({"Process_CacheSize": 0})
    a.until(lambda: iothub.reported.get("latest_state") == "failed", 1.0, "failed reported")
    assert iothub.reported["latest_invalid_fields"] == ["Process_CacheSize"]
    assert a.agent.config.process.cache_size == 66
    # null removes the twin's value: back to the default.
    iothub.set_desired({"Process_CacheSize": None})
    a.until(lambda: iothub.reported.get("latest_state") == "success", 1.0, "success reported")
    assert a.agent.config.process.cache_size == 256


def test_reported_properties_only_when_changed_and_counters_rate_limited(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    options = UplinkOptions(backoff_min_s=0.2, backoff_max_s=1.0, report_check_s=0.1,
                            counters_every_s=5.0)
    a = start(agents, tmp_path, module(iothub, hub_certs), options=options)
    a.connected()
    iothub.wait_for_reported(lambda r: "latest_state" in r, timeout=5)
    first = len(iothub.reported_patches)
    a.spin(1.0)
    assert len(iothub.reported_patches) == first  # nothing changed: nothing sent
    # Counters change (batches written and confirmed) but only counters: held back.
    for i in range(3):
        a.put("Low", [{"t": "test", "i": i}])
    a.until(lambda: a.depth() == 0, 10, "delivered")
    a.spin(0.5)
    assert len(iothub.reported_patches) == first
    # ... until counters_every_s since the last report that carried counters.
    a.until(lambda: len(iothub.reported_patches) == first + 1, 8, "the counters-only patch")
    patch = iothub.reported_patches[-1]
    assert set(patch) <= {"counters", "outbox_depth"}
    assert iothub.reported["counters"]["outbox"]["confirmed"] == 3
    # A configuration change goes at once, whatever the counters' slot.
    iothub.set_desired({"Login_CacheSize": 17})
    a.until(lambda: iothub.reported.get("Login_CacheSize") == 17, 1.0, "config reported")
    a.spin(1.0)
    assert len(iothub.reported_patches) == first + 2


# --- telemetry ---------------------------------------------------------------------------------


def test_batches_arrive_in_priority_and_sequence_order_with_their_properties(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    iothub.stop()  # the outbox fills while there is no hub
    a = start(agents, tmp_path, module(iothub, hub_certs))
    prios = ["Low", "High", "Medium", "Low", "High", "Medium"] * 5
    put = [(prio, a.put(prio, [{"t": "test", "i": i, "argv": [b"\xff\xfe", "x"]}]))
           for i, prio in enumerate(prios)]
    a.spin(0.5)
    assert a.state().startswith("disconnected: ")
    iothub.start()
    a.until(lambda: a.depth() == 0, 30, "the outbox drained")
    records = iothub.wait_for_telemetry(len(put), timeout=5)
    rank = {"High": 0, "Medium": 1, "Low": 2}
    expected = sorted(put, key=lambda p: (rank[p[0]], p[1]))
    assert [(r.custom["prio"], int(r.custom["seq"])) for r in records] == expected
    for r in records:
        assert r.content_type == MSGPACK_TYPE
        assert r.custom["v"] == "1" and r.custom["agent"] == AGENT_ID
        assert (r.device_id, r.module_id) == MODULE
        assert r.message_id == f"{AGENT_ID}:{r.custom['seq']}"
        env = decode_envelope(r.payload)
        assert env["seq"] == int(r.custom["seq"]) and env["prio"] == r.custom["prio"]
        assert env["events"][0]["argv"] == [b"\xff\xfe", "x"]  # the stored bytes, as stored
        assert "iothub_interface_id" not in r.system
    status = a.uplink.status()
    assert status["delivered"] == len(put) and status["last_seq"] == expected[-1][1]
    assert a.outbox.counters().confirmed == len(put)


def test_batches_stored_in_one_turn_are_handed_over_in_groups(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent],
    dir_fsyncs: list[Path]
) -> None:
    """A turn that stores many batches hands them to the worker every handover_every (8):
    a hand-over reads the batches, and a read first fsyncs the outbox's directory, so a
    hand-over per stored batch cost a directory fsync per batch on top of the file's own.
    The directory fsyncs are counted on the real file system while 32 batches are stored."""
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()
    dir_fsyncs.clear()
    synced = dir_fsyncs
    every = a.uplink.options.handover_every
    seqs = [a.put("Low", [{"t": "test", "i": i}]) for i in range(4 * every)]
    assert len(synced) == 4  # one per group handed over, not one per batch
    a.until(lambda: a.depth() == 0, 30, "the outbox drained")
    records = iothub.wait_for_telemetry(len(seqs), timeout=5)
    assert seqs_of(records) == seqs


def test_json_format_content_type_encoding_and_security_marker(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    iothub.set_twin({"Upload_Format": "json"})
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()
    events = [{"t": "exec", "pid": 7, "argv": [b"caf\xc3\xa9", b"\xff"], "comm": "sh"}]
    seq = a.put("High", events)
    (record,) = a.telemetry(iothub, 1)
    assert record.content_type == JSON_TYPE and record.content_encoding == "utf-8"
    assert record.system["iothub_interface_id"] == "urn:azureiot:Security:SecurityAgent:1"
    assert record.custom == {"v": "1", "seq": str(seq), "prio": "High", "agent": AGENT_ID}
    doc = json.loads(record.payload.decode("utf-8"))
    assert doc["seq"] == seq and doc["n"] == 1 and doc["agent"] == AGENT_ID
    # bin as text, \xNN for what is not UTF-8 (as micro-agent decode prints it)
    assert doc["events"] == [{"t": "exec", "pid": 7, "argv": ["café", "\\xff"], "comm": "sh"}]
    assert list(doc)[-1] == "events"


def test_json_larger_than_the_message_limit_is_split_into_parts(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    iothub.set_twin({"Upload_Format": "json", "Upload_MaxMessageBytes": 8192})
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()
    # Bytes that are not UTF-8 grow fourfold as \xNN text: 3 KB of msgpack, 12 KB of JSON each.
    events = [{"t": "blob", "i": i, "data": bytes([0xFF]) * 600} for i in range(5)]
    seq = a.put("Medium", events)
    a.until(lambda: a.depth() == 0, 10, "delivered")
    records = iothub.telemetry
    assert len(records) > 1
    assert {r.custom["seq"] for r in records} == {str(seq)}
    assert [int(r.custom["part"]) for r in records] == list(range(1, len(records) + 1))
    assert {r.custom["parts"] for r in records} == {str(len(records))}
    assert all(len(r.payload) <= 8192 for r in records)
    docs = [json.loads(r.payload) for r in records]
    assert [e["i"] for d in docs for e in d["events"]] == list(range(5))
    assert all(d["n"] == len(d["events"]) and d["parts"] == len(docs) for d in docs)
    assert len({r.message_id for r in records}) == len(records)


def test_encode_batch_splits_and_keeps_oversized_events_as_msgpack() -> None:
    ident = Identity("a", "1", "d", "m")
    events = [{"t": "x", "i": i, "b": bytes([0x80]) * (100 + 10 * i)} for i in range(40)]
    batch = msgpack.packb(events, use_bin_type=True)
    from agent.envelope import wrap

    payload = wrap(batch, ident, seq=9, ts=1, prio="Low", coll=["T"], drops={"x_events": 2})
    assert encode_batch(payload, "msgpack", 4096)[0].body == payload  # as stored
    parts = encode_batch(payload, "json", 4096)
    assert len(parts) > 3 and all(len(p.body) <= 4096 and p.content_type == JSON_TYPE for p in parts)
    docs = [json.loads(p.body) for p in parts]
    assert [e["i"] for d in docs for e in d["events"]] == list(range(40))
    assert docs[0]["drops"] == {"x_events": 2} and all(d["drops"] == {} for d in docs[1:])
    # One event larger than the limit as JSON (but not as msgpack) goes as msgpack, whole.
    big = wrap(msgpack.packb([{"t": "x", "b": bytes([0x80]) * 3000}], use_bin_type=True), ident,
               seq=10, ts=1, prio="Low", coll=["T"], drops={})
    (part,) = encode_batch(big, "json", 4096)
    assert part.content_type == MSGPACK_TYPE and not part.security
    assert decode_envelope(part.body)["events"][0]["b"] == bytes([0x80]) * 3000  # bin kept


# --- outages -----------------------------------------------------------------------------------


# Batches handed to the worker and not yet reported back: a connection that ends sends at most
# these again. A process that ends (SIGKILL) also sends again those reported sent and not yet
# confirmed (the confirms' group commit).
WINDOW = UplinkOptions().window
RESENT_AFTER_A_CRASH = WINDOW + UplinkOptions().confirm_batches


def sends_by_seq(hub: Hub) -> defaultdict[int, list[Publish]]:
    """The telemetry PUBLISH packets the device sent through the gate, by batch seq."""
    out: defaultdict[int, list[Publish]] = defaultdict(list)
    for publish in hub.device_publishes():
        match = TELEMETRY_TOPIC.match(publish.topic)
        if match is not None:
            out[int(parse_property_bag(match.group(3))["seq"])].append(publish)
    return out


def check_sends(hub: Hub, records: list[Telemetry], seqs: list[int], again_at_most: int = WINDOW
                ) -> dict[int, set[int]]:
    """The at-least-once bound of docs/uplink.md, counted where the device's bytes enter the
    hub (the gate records every PUBLISH with the connection it came on):

    - a batch is sent at most once on each connection it was in flight on;
    - every copy the hub got is one of those sends, or mosquitto handing the hub client
      again a message it had before the hub side went away (`redelivered`, MQTT DUP: the
      stand-in's own QoS 1, not a send of the device);
    - when a connection ends, at most `again_at_most` of the batches sent on it are sent
      again later (what was in flight: handed to the worker and not yet reported back; when
      the process was killed, also what was reported sent and not yet confirmed).

    Returns seq -> the connections it was sent on."""
    sends = sends_by_seq(hub)
    for seq in seqs:
        arrived = [r for r in records if int(r.custom["seq"]) == seq]
        if len(sends[seq]) > 1 or len(arrived) > 1:  # shown when an assertion fails
            print(f"seq {seq}: sent (connection, DUP, packet id) "
                  f"{[(p.connection, p.dup, p.packet_id) for p in sends[seq]]}, "
                  f"redelivered flags of the arrivals {[r.redelivered for r in arrived]}")
    connections: dict[int, set[int]] = {}
    again_after: defaultdict[int, set[int]] = defaultdict(set)
    for seq in seqs:
        per_connection = Counter(p.connection for p in sends[seq])
        assert set(per_connection.values()) == {1}, (seq, sends[seq])
        connections[seq] = set(per_connection)
        arrived = [r for r in records if int(r.custom["seq"]) == seq]
        fresh = [r for r in arrived if not r.redelivered]
        # A redelivery may be the first or only arrival: the kill cut mosquitto's delivery
        # to the hub client before it was recorded, and the restarted broker hands it over
        # again (with the window published back to back, dozens are on that way at a kill).
        assert arrived and len(fresh) <= len(per_connection), (seq, sends[seq], arrived)
        assert len({r.message_id for r in arrived}) == 1
        for connection in sorted(per_connection)[:-1]:
            again_after[connection].add(seq)
    for connection, again in again_after.items():
        assert len(again) <= again_at_most, (connection, sorted(again))
    return connections


@pytest.mark.timeout(120)
def test_a_send_cut_by_the_hub_going_away_goes_out_once_per_connection(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    """A backlog drains back to back, so a kill lands on a send in flight: the SDK cancels
    that send, the batch goes back and out again on the next connection, once. (A client
    reconnected after such a cancel used to publish it again by itself as well: two copies
    on one connection.)"""
    a = start(agents, tmp_path, module(iothub, hub_certs))
    stored: list[int] = []

    def store(n: int) -> None:
        for _ in range(n):
            stored.append(a.put("Medium", [{"t": "test", "n": len(stored), "pad": "x" * 200}]))

    def sent_after(connection: int) -> list[int]:
        """The connections newer than `connection` that published a batch, once a send."""
        return [p.connection for sent in sends_by_seq(iothub).values() for p in sent
                if p.connection > connection]

    def sending_after(connection: int) -> Callable[[], bool]:
        return lambda: len(sent_after(connection)) >= 1

    store(200)
    a.connected()
    cut: list[int] = []
    for _ in range(3):
        # A connection that is sending is cut with sends in flight: from the hold on the hub
        # acknowledges nothing, and the kill waits until it holds a PUBACK back. (Without the
        # hold, a kill once landed after the whole backlog had gone out in CI: the drain is
        # fast.) A few more batches make sure there is something to send whatever has gone.
        last = cut[-1] if cut else 0
        a.until(sending_after(last), 60, f"a connection after {last} sending")
        iothub.hold_replies()
        store(10)
        a.until(lambda: iothub.held_pubacks() > 0, 10, "a PUBACK held")
        cut.append(max(sent_after(last)))
        iothub.kill()
        a.spin(0.5)
        iothub.start()
        a.connected(timeout=30)
        store(100)  # the next connection's backlog, however far this one got
    a.until(lambda: a.depth() == 0, 60, "the backlog drained")
    records = iothub.telemetry
    seqs = seqs_of(records)
    assert set(seqs) == set(stored), f"missing {sorted(set(stored) - set(seqs))}"
    connections = check_sends(iothub, records, sorted(set(seqs)))
    carriers = set().union(*connections.values())
    assert len(carriers - set(cut)) >= 1, (carriers, cut)  # and one after the last kill
    for connection in cut:  # each cut connection's sends in flight went out again, once
        assert any(connection in c and len(c) > 1 for c in connections.values()), connection
    assert a.uplink.status()["disconnects"] >= 3


@pytest.mark.timeout(60)
def test_the_sas_token_is_renewed_by_connecting_again_without_losing_a_batch(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    """Tokens of 6 s are renewed 1 s before they expire (a fifth of the life): the worker
    lets what is in flight finish, then connects again with a new token. Batches stored all
    along arrive, each at most once per connection it was sent on."""
    options = replace(FAST, sas_ttl_s=6)
    a = start(agents, tmp_path, module(iothub, hub_certs), options=options)
    a.connected()
    before = [d for d in iothub.gate.decisions() if d[1]]
    stored: list[int] = []
    end = time.monotonic() + 12.0
    while time.monotonic() < end:
        stored.append(a.put("Medium", [{"t": "test", "n": len(stored)}]))
        a.spin(0.05)
    a.until(lambda: a.depth() == 0, 30, "the backlog drained")
    accepted = [d for d in iothub.gate.decisions() if d[1]][len(before):]
    assert len(accepted) >= 2, accepted  # two renewals in 12 s at least
    assert all(reason == "SAS token valid" for _, _, reason in accepted)
    records = iothub.telemetry
    assert set(seqs_of(records)) == set(stored)
    check_sends(iothub, records, sorted(set(stored)))
    assert a.uplink.status()["send_errors"] == 0


@pytest.mark.timeout(120)
def test_hub_killed_and_restarted_nothing_is_lost(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    """At least once: a batch leaves the outbox only after send_message returned, so every
    seq arrives; a batch whose PUBACK was lost in the kill is sent again (a duplicate)."""
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()
    stored: list[int] = []
    def kill_and_restart() -> None:
        time.sleep(1.0)
        iothub.restart(kill=True, downtime=3.0)

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    end = time.monotonic() + 7.0
    outage_turns = 0
    while time.monotonic() < end:
        stored.append(a.put("Medium", [{"t": "test", "n": len(stored)}]))
        a.spin(0.05)
        if not iothub.running:
            outage_turns += 1
    killer.join()
    assert outage_turns > 20  # the loop kept turning (and storing) during the outage
    a.until(lambda: a.depth() == 0, 60, "the backlog drained after the restart")
    seqs = seqs_of(iothub.telemetry)
    assert set(seqs) == set(stored), f"missing {sorted(set(stored) - set(seqs))}"
    assert a.uplink.status()["disconnects"] >= 1
    # In order, apart from duplicates: the first arrival of each seq is ascending.
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen)


@pytest.mark.timeout(120)
def test_unreachable_hub_never_stalls_collection_and_the_backlog_drains(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    iothub.stop()  # no gate, no broker: connection refused
    a = start(agents, tmp_path, module(iothub, hub_certs))
    stored = []
    for i in range(40):
        stored.append(a.put("Low", [{"t": "test", "i": i}]))
        a.spin(0.1)
    status = a.uplink.status()
    assert status["state"].startswith("disconnected: "), status
    assert "refused" in status["state"].lower() or "connect" in status["state"].lower()
    assert a.depth() == 40  # the outbox grows
    assert a.longest_turn < 0.5  # turns of 20 ms never waited on the hub
    iothub.start()
    a.until(lambda: a.depth() == 0, 30, "the backlog drained")
    assert seqs_of(iothub.telemetry) == stored


@pytest.mark.timeout(60)
def test_a_hub_that_accepts_but_never_answers_costs_a_timeout_not_a_turn(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.3", 8883))
    silent.listen(16)  # accepts (the kernel does), never says a word
    try:
        cs = iothub.identity(*MODULE).connection_string(gateway="127.0.0.3")
        options = UplinkOptions(backoff_min_s=0.2, backoff_max_s=1.0, connect_timeout_s=1.5,
                                call_timeout_s=1.5)
        a = start(agents, tmp_path, hub_identity(cs, hub_certs), options=options)
        a.until(lambda: "did not return within" in a.state(), 10, "the connect timed out")
        assert a.state().startswith("disconnected: connect did not return within 1.5 s")
        a.put("High", [{"t": "test"}])
        a.spin(1.0)
        assert a.longest_turn < 0.5 and a.depth() == 1
        assert a.uplink.status()["timeouts"] >= 1
    finally:
        silent.close()


# --- identities and refusals -------------------------------------------------------------------


def test_wrong_key_fails_clearly_and_does_not_hammer_the_hub(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent], caplog: Any
) -> None:
    import base64

    identity = iothub.identity(*MODULE)
    wrong = base64.b64encode(bytes(32)).decode()
    before = len(iothub.gate.decisions())
    with caplog.at_level(logging.DEBUG):
        a = start(agents, tmp_path, hub_identity(identity.connection_string(key=wrong), hub_certs))
        a.until(lambda: a.state().startswith("failed: "), 10, "failed")
        a.spin(3.0)
    assert "authentication refused by the hub" in a.state()
    refusals = iothub.gate.decisions()[before:]
    assert len(refusals) == 1 and refusals[0][1] is False  # once, not every second
    assert wrong not in caplog.text and wrong not in json.dumps(a.uplink.status())


def test_a_token_refused_while_the_clock_was_an_hour_behind_is_tried_again_once_it_is_set(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SAS token's expiry comes from the agent's clock: an hour behind, the token has
    expired when it is made and the hub refuses it. That refusal waits for no file change:
    once the clock is set (a jump the clock counts), the uplink connects again."""
    from agent.clock import CLOCK

    offset = tmp_path / "clock-offset"
    offset.write_text("-3600\n")
    monkeypatch.setattr(CLOCK, "offset_file", str(offset))
    monkeypatch.setattr(CLOCK, "_offset_s", CLOCK._offset_s)  # 0 again after the test
    monkeypatch.setattr(CLOCK, "_next_check", float("-inf"))  # read the file now
    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.until(lambda: a.state().startswith("failed"), 15, "the expired token refused")
    a.spin(1.5)
    assert a.state().startswith("failed")  # no file changed: it waits
    offset.write_text("0\n")
    os.utime(offset, (time.time() + 5, time.time() + 5))  # a new mtime, however fast
    a.connected(timeout=20)


def test_reconnects_leave_no_descriptor_behind(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    """A client per connection: each one's socket and paho's wake-up socket pair are closed
    when it is shut down, not when the cyclic collector gets to it (the soak saw the agent's
    descriptors climb with its reconnects)."""
    import gc

    a = start(agents, tmp_path, module(iothub, hub_certs))
    a.connected()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.disable()  # what the collector would close must not be what keeps the count flat
    try:
        before = fds()
        for _ in range(5):
            iothub.gate.stop(abort=True)
            a.until(lambda: a.state() != "connected", 15, "the connection lost")
            iothub.gate.start()
            a.connected(timeout=30)
        assert fds() <= before + 1, (before, fds())
    finally:
        gc.enable()


def test_wrong_ca_fails_clearly(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    other = hub_certs.other_ca()
    cs = iothub.identity(*MODULE).connection_string()
    identity = identity_from_fields(parse_connection_string(cs), source="test",
                                    ca_file=str(other.cert))
    a = start(agents, tmp_path, identity)
    a.until(lambda: a.state().startswith("failed: "), 10, "failed")
    assert "TLS: the hub's certificate is not trusted" in a.state()
    assert "certificate verify failed" in a.state()


def test_device_connection_string(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent]
) -> None:
    identity = iothub.identity("dev-plain")
    a = start(agents, tmp_path, hub_identity(identity.connection_string(), hub_certs))
    a.connected()
    seq = a.put("High", [{"t": "test"}])
    (record,) = a.telemetry(iothub, 1)
    assert (record.device_id, record.module_id) == ("dev-plain", None)
    assert record.custom["seq"] == str(seq)
    iothub.wait_for_reported(lambda r: r.get("latest_state") == "success", timeout=5)


@pytest.mark.parametrize("module_id", [None, "iot-micro-agent"], ids=["device", "module"])
def test_x509_identity(
    module_id: str | None, iothub: Hub, hub_certs: Certificates, tmp_path: Path,
    agents: list[HubAgent]
) -> None:
    ident = iothub.x509_identity("dev-x509", module_id)
    assert ident.x509 is not None
    key = tmp_path / "device.key"
    key.write_bytes(ident.x509.key.read_bytes())
    key.chmod(0o600)
    cs = f"HostName={iothub.hostname};DeviceId=dev-x509;x509=true;GatewayHostName={iothub.gateway}"
    if module_id:
        cs += f";ModuleId={module_id}"
    identity = hub_identity(cs, hub_certs, cert_file=str(ident.x509.cert), key_file=str(key))
    assert identity.auth == "x509"
    a = start(agents, tmp_path, identity)
    a.connected()
    assert iothub.gate.decisions()[-1][1:] == (True, "X.509 CN=dev-x509")
    a.put("Low", [{"t": "test"}])
    (record,) = a.telemetry(iothub, 1)
    assert (record.device_id, record.module_id) == ("dev-x509", module_id)


def test_connection_string_checks_never_show_the_key() -> None:
    key = "c2VjcmV0LWtleS1vZi10aGUtZGV2aWNlLTMyYnl0ZXM="
    good = f"HostName=h.azure-devices.net;DeviceId=d;ModuleId=m;SharedAccessKey={key}"
    fields = parse_connection_string(f'"{good};"\n')
    assert fields["ModuleId"] == "m" and fields["SharedAccessKey"] == key
    bad = {
        f"HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey={key}": "hub-level",
        f"HostName=h;DeviceId=d;SharedAccessKey={key};DeviceId=e": "appears twice",
        f"HostName=h;DeviceId=d;sharedaccesskey={key}": "did you mean SharedAccessKey",
        "HostName=h;DeviceId=d;SharedAccessKey=not*base64": "not valid base64",
        f"HostName=h;SharedAccessKey={key}": "lacks DeviceId",
        f"HostName=h;DeviceId=d;SharedAccessKey={key};x509=true": "both",
        "HostName=h;DeviceId=d": "neither",
        "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=x": "SAS token",
        "": "empty",
    }
    for text, says in bad.items():
        with pytest.raises(IdentityError) as caught:
            parse_connection_string(text)
        assert says in str(caught.value)
        assert key not in str(caught.value)
    identity = identity_from_fields(fields, source="test")
    assert key not in repr(identity) and key not in identity.describe()


def test_identity_sources_and_their_order(tmp_path: Path, hub_certs: Certificates) -> None:
    cs_file = tmp_path / "cs"
    cs_file.write_text("HostName=file.azure-devices.net;DeviceId=f;SharedAccessKey=a2V5\n")
    cs_file.chmod(0o600)
    env_cs = "HostName=env.azure-devices.net;DeviceId=e;SharedAccessKey=a2V5"
    missing = str(tmp_path / "absent")
    # Nothing configured: the local default, and the reason.
    ident, why = load_identity(None, environ={}, default_file=missing)
    assert ident is None and missing in why and "IOTHUB_CONNECTION_STRING" in why
    # The environment, then an existing default file, an explicit file over both.
    ident, _ = load_identity(None, environ={"IOTHUB_CONNECTION_STRING": env_cs},
                             default_file=str(cs_file))
    assert ident is not None and ident.hostname == "env.azure-devices.net"
    ident, _ = load_identity(None, environ={}, default_file=str(cs_file))
    assert ident is not None and ident.hostname == "file.azure-devices.net"
    ident, why = load_identity(str(cs_file), environ={"IOTHUB_CONNECTION_STRING": env_cs})
    assert ident is not None and ident.device_id == "f" and "ignored" in why
    # An explicit file that is missing is an error, not the local default.
    with pytest.raises(IdentityError, match="does not exist"):
        load_identity(missing, environ={})
    # The CA file from the environment, checked.
    ident, _ = load_identity(str(cs_file), environ={"IOTHUB_CA_FILE": str(hub_certs.ca.cert)})
    assert ident is not None and ident.ca_pem == hub_certs.ca_pem
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x00")
    with pytest.raises(IdentityError, match="not PEM"):
        load_identity(str(cs_file), str(not_pem), environ={})
    # x509=true needs the files; a key file readable by others is refused like the string.
    x509 = tmp_path / "x509"
    x509.write_text("HostName=h.azure-devices.net;DeviceId=dev-x509;x509=true")
    x509.chmod(0o600)
    with pytest.raises(IdentityError, match="give the certificate and key files"):
        load_identity(str(x509), environ={})
    pair = hub_certs.client("dev-x509")
    key = tmp_path / "k.pem"
    key.write_bytes(pair.key.read_bytes())
    key.chmod(0o640)
    with pytest.raises(IdentityError, match="mode 0640"):
        load_identity(str(x509), None, str(pair.cert), str(key), environ={})
    key.chmod(0o600)
    other = hub_certs.client("dev-other")
    with pytest.raises(IdentityError, match="do not load together"):
        load_identity(str(x509), None, str(other.cert), str(key), environ={})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
@pytest.mark.root
def test_connection_string_file_readable_by_others_is_refused(mode: int, tmp_path: Path) -> None:
    cs_file = tmp_path / "connection_string"
    key = "c2VjcmV0"
    cs_file.write_text(f"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey={key}")
    cs_file.chmod(mode)
    with pytest.raises(IdentityError) as caught:
        load_identity(str(cs_file), environ={})
    assert str(cs_file) in str(caught.value) and f"mode {mode:04o}" in str(caught.value)
    assert key not in str(caught.value)
    # Owned by someone else: refused too, even at 0600.
    cs_file.chmod(0o600)
    os.chown(cs_file, 4242, 4242)
    with pytest.raises(IdentityError, match="owned by uid 4242"):
        load_identity(str(cs_file), environ={})
    # micro-agent run refuses to start, says why, exits 2.
    cs_file.chmod(mode)
    os.chown(cs_file, 0, 0)
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(tmp_path / "data"),
         "--config", str(tmp_path / "none.json"), "--connection-string-file", str(cs_file)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert f"refusing connection-string file {cs_file}: mode {mode:04o}" in proc.stderr
    assert key not in proc.stderr


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 300.0, rng) for n in range(1, 16)]
    assert all(1.0 <= d <= 300.0 for d in delays)
    assert delays[0] <= 1.25 and delays[-1] == pytest.approx(300.0, rel=0.25)
    assert all(delays[i + 1] >= delays[i] * 0.6 for i in range(7))  # grows
    assert len({round(backoff_delay(5, 1.0, 300.0, rng), 6) for _ in range(20)}) > 10  # jitter


# --- micro-agent run -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_micro_agent_run_uses_the_hub_and_status_shows_it(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path
) -> None:
    cs_file = tmp_path / "connection_string"
    key = iothub.identity(*MODULE).key
    assert key is not None
    cs_file.write_text(iothub.identity(*MODULE).connection_string() + "\n")
    cs_file.chmod(0o600)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**ALL_OFF, "Heartbeat_Disabled": False}))
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "IOTHUB_CONNECTION_STRING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data), "--config", str(config),
         "--connection-string-file", str(cs_file), "--ca-file", str(hub_certs.ca.cert),
         "--log-level", "debug"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        def status() -> dict[str, Any]:
            try:
                return dict(json.loads((data / "status.json").read_text()))
            except (OSError, ValueError):
                return {}

        deadline = time.monotonic() + 30
        while status().get("uplink", {}).get("state") != "connected":
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, status()
            time.sleep(0.2)
        shown = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--data-dir", str(data)],
                               check=True, capture_output=True, text=True, timeout=30)
        assert "IoT Hub test-hub.azure-devices.net as dev1/iot-micro-agent (sas): connected" in shown.stdout
        iothub.wait_for_reported(lambda r: r.get("Heartbeat_Disabled") is False, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # The heartbeat's first snapshot, sealed at SIGTERM, was sent before the exit.
    records = iothub.wait_for_telemetry(1, timeout=5)
    envs = [decode_envelope(r.payload) for r in records]
    assert any(e["t"] == "heartbeat" for env in envs for e in env["events"])
    assert all(env["dev"] == "dev1" and env["mod"] == "iot-micro-agent" for env in envs)
    assert f"sending batches to IoT Hub {iothub.hostname} via localhost as dev1/iot-micro-agent (SAS key from {cs_file}" in err
    assert key not in err
    final = status()["uplink"]
    assert final["last_seq"] == max(env["seq"] for env in envs) and final["state"] == "closed"
    shown = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--data-dir", str(data)],
                           check=False, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 3  # not running any more
    assert f"last confirmed batch seq {final['last_seq']} at" in shown.stdout
