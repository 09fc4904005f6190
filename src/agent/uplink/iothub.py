"""The IoT Hub uplink: batches from the outbox to Azure IoT Hub over IoT Hub's MQTT (spoken by
agent.uplink.mqtt on paho-mqtt), the module twin's desired properties into the
configuration, the reported properties back. docs/uplink.md describes the behaviour; this is
the map of the code.

Threads. One worker thread (`iothub-uplink`) connects, reads the twin and publishes; paho's
network thread (one per connection) reads and writes the socket and reports PUBACKs, twin
answers and desired patches. The agent's loop never waits on either. A connect runs with a
deadline (`call_with_timeout`), twin requests and PUBACKs have call_timeout_s: a hub that
stops answering costs the worker a timeout, never the loop a turn. The loop talks to the
worker through `pump()`, which returns at once: it confirms the batches the worker reports
sent (outbox.confirm_many, in the loop's thread: the only place batches leave the outbox)
and hands the next ones over, at most `window` in flight, in the outbox's send order. The
worker publishes them back to back, in that order, and a batch is sent when the PUBACK of
each of its messages came (paho's on_publish). When the connection fails (or a PUBACK does
not come in time), the batches not acknowledged and those queued go back (they stay in the
outbox), the client is dropped and the worker connects a new one with exponential backoff
and jitter.

Parts. The connection's states and their transitions, what a failed call means (classify:
reconnect, refused or rejected) and the counters (one lock) are in agent.uplink.connection;
the MQTT client, topics and properties in agent.uplink.mqtt; SAS tokens in agent.uplink.sas
(renewed by connecting again before they expire); the IoT Edge workload API in
agent.uplink.edge_workload; the messages a batch becomes (encode_batch) are in
agent.envelope.

Twin. On every (re)connect the client subscribes to the twin's answers and desired patches,
then the worker reads the whole twin, has the loop apply its desired document
(ConfigStore.apply_desired, then Agent.apply) and build the reported document, and reports
what changed since the twin's reported section (ReportedState). A desired patch arrives on
paho's thread, which only queues it for the loop (Agent.call_soon); a patch newer than the
read that is applied before it makes the read stale (_apply_desired).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from agent.clock import CLOCK, wall_time
from agent.config import Config, ConfigStore, ConfigUpdate, ReportedState
from agent.config.local import UplinkTransport
from agent.envelope import JSON_TYPE, SCHEMA_VERSION, UnsendableBatch, encode_batch
from agent.limits import MAX_MESSAGE_BYTES
from agent.outbox import MAX_DOOMED, Outbox, OutboxError
from agent.record import record
from agent.uplink import sas
from agent.uplink.connection import (
    CallTimeout,
    ConnectionStateMachine,
    Failure,
    LinkState,
    Outcome,
    UplinkCounters,
    backoff_delay,
    call_with_timeout,
    classify,
)
from agent.uplink.identity import (
    HubIdentity,
    IdentityError,
    check_renewed,
    files_signature,
    identity_files,
)
from agent.uplink.mqtt import (
    TWIN_DESIRED,
    TWIN_RESPONSES,
    Endpoint,
    MqttClient,
    check_status,
    hub_username,
    property_bag,
    telemetry_prefix,
)
from agent.uplink.provisioning import Provisioner

log = logging.getLogger("agent.uplink")

# Reported keys that change all the time: a patch of only these is rate-limited.
VOLATILE_REPORTED = frozenset({"counters", "outbox_depth"})


class AgentHooks(Protocol):
    """What the uplink needs of agent.pipeline.Agent."""

    store: ConfigStore
    config: Config

    def call_soon(self, fn: Callable[[], None]) -> None: ...

    def apply(self, update: ConfigUpdate) -> None: ...

    def reported_document(self) -> dict[str, Any]: ...


@record(frozen=True)
class UplinkOptions:
    """window: batches handed to the worker and not yet reported back (sent, returned or
    rejected), at most window_bytes of payload (at least one batch); the worker's queue is
    refilled when it is down to half. A connection that ends sends at most these again.
    confirm_batches / confirm_after_s: a group commit. Batches reported sent are confirmed
    (removed from the outbox: one state write, one directory fsync) together once
    confirm_batches of them or window_bytes of payload wait, or the worker has nothing left,
    or the oldest has waited confirm_after_s; a crash before that sends them again (at least
    once). Backoff: the delay before
    reconnect attempt n is backoff_min_s * 2**(n-1), capped at backoff_max_s, times a random
    factor in [0.75, 1.25] (then clamped to the bounds again). refused_retry_s: after the hub
    refused the credentials or TLS failed, the next attempt waits for the identity's file to
    change, or this long. report_check_s: how often the loop offers the reported document;
    counters_every_s: at most one patch of counters only (VOLATILE_REPORTED) per this long.
    close_grace_s: how long close() waits for batches already handed over. identity_check_s:
    how often, while connected, the identity's files are stat()ed for a rotation (one stat
    per file: the connection string, the certificate, the key). sas_ttl_s: how long a SAS
    token is valid; the worker connects again with a new one min(120 s, a fifth of it)
    before it expires. call_timeout_s: a twin request's answer or a message's PUBACK that
    takes longer fails the connection. handover_every: while a turn stores batches, they
    are handed to the worker in groups of this many (the rest with the turn's pump): each
    hand-over reads the batches, and a read first makes the renames of the stored batches
    durable (one directory fsync), so a hand-over per stored batch added a directory fsync
    to each file's own."""

    window: int = 64
    window_bytes: int = 1 << 20
    confirm_batches: int = 64
    confirm_after_s: float = 0.5
    handover_every: int = 8
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0
    connect_timeout_s: float = 60.0
    call_timeout_s: float = 30.0
    apply_timeout_s: float = 30.0
    report_check_s: float = 5.0
    counters_every_s: float = 60.0
    refused_retry_s: float = 3600.0
    close_grace_s: float = 5.0
    keep_alive_s: int = 60
    identity_check_s: float = 10.0
    sas_ttl_s: int = sas.DEFAULT_TTL_S

    def __post_init__(self) -> None:
        if self.handover_every < 1:
            raise ValueError(f"handover_every={self.handover_every}: at least 1")
        if not 1 <= self.window <= 64:
            raise ValueError(f"window={self.window}: 1..64")
        if not 1 <= self.confirm_batches <= MAX_DOOMED:
            # One chunk of the outbox's removal log: one state write per group.
            raise ValueError(f"confirm_batches={self.confirm_batches}: 1..{MAX_DOOMED}")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise ValueError("backoff bounds: 0 < min <= max")
        if self.sas_ttl_s < 5:
            raise ValueError(f"sas_ttl_s={self.sas_ttl_s}: at least 5")


# -- the uplink ---------------------------------------------------------------------------------


@record(frozen=True)
class _Item:
    batch_id: str
    seq: int
    prio: str
    payload: bytes
    fmt: str
    max_bytes: int


_SENT, _RETURNED, _REJECTED = "sent", "returned", "rejected"


class _Flight:
    """A batch published and waiting for the PUBACKs of its `remaining` messages."""

    __slots__ = ("item", "remaining")

    def __init__(self, item: _Item, remaining: int) -> None:
        self.item = item
        self.remaining = remaining


_SIG = re.compile(r"(sig=|SharedAccessKey=|SharedAccessSignature )[^&;\s]+")


class IotHubUplink:
    """Uplink (agent.pipeline) to Azure IoT Hub. Make it, hand it to the Agent, then
    `attach(agent)` before agent.run(): the worker connects in the background.

    `reload_identity`, when given, loads the identity again (the command line's sources); it
    is called when the identity's files changed (identity_files: a rotation while connected,
    or after the hub refused the credentials). A rotation that does not load, or whose
    certificate is not valid now, keeps the connection and is reported (status
    "identity_change"); one that loads reconnects with the new identity.

    `provisioner`, when given, is DPS (agent.uplink.provisioning): `identity` is then the
    stored assignment's, or None to provision before the first connect; a hub that refuses
    the credentials makes the worker provision again, with the backoff, instead of waiting
    for a file to change."""

    def __init__(self, identity: HubIdentity | None, agent_id: str,
                 options: UplinkOptions | None = None, *,
                 reload_identity: Callable[[], HubIdentity] | None = None,
                 provisioner: Provisioner | None = None,
                 transport: UplinkTransport | None = None,
                 rng: random.Random | None = None) -> None:
        if identity is None and provisioner is None:
            raise ValueError("an identity, or DPS to get one")
        self.identity = identity
        self._provisioner = provisioner
        self._reprovision = False
        self._dps_state = "assigned (stored)" if identity is not None else "not provisioned"
        self.agent_id = agent_id
        self.options = options or UplinkOptions()
        self.transport = transport or UplinkTransport()
        self._reload_identity = reload_identity
        self._rng = rng or random.Random()
        self._agent: AgentHooks | None = None
        self._outbox: Outbox | None = None
        self._lock = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._results: deque[tuple[str, int, str]] = deque()
        self._report_doc: dict[str, Any] | None = None
        self._accepting = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: MqttClient | None = None
        self._unacked: dict[str, _Flight] = {}  # published, PUBACKs not all in (under _lock)
        self._token_renew_at: float | None = None  # wall time to connect with a new SAS token
        self._link = ConnectionStateMachine(self._redact)
        self._epoch = 0
        self._attempts = 0
        self._retry_at = 0.0
        self._refused = False
        # The wall clock's jump counts at the last refusal: a SAS token's expiry comes from
        # the agent's clock, so a refusal while the clock was wrong (an hour behind: the token
        # had expired when it was made) is tried again once the clock is set.
        self._refused_jumps: dict[str, int] = {}
        # The identity's files as last loaded (or last found unusable): a change is a rotation.
        # (DPS before its first assignment has no files: nothing to watch.)
        self._identity_sig = files_signature(identity_files(identity) if identity else ())
        self._next_identity_check = 0.0
        self._identity_change: dict[str, Any] | None = None
        self._identity_changes = 0
        self._old_secrets: list[str] = []  # of rotated-out identities: redacted too
        self._reported = ReportedState()
        self._last_counters = 0.0
        # Loop-thread state.
        self._inflight: dict[str, int] = {}  # handed to the worker: id -> payload bytes
        self._sent: dict[str, int] = {}  # reported sent, not yet confirmed: id -> seq
        self._sent_bytes = 0  # their payload bytes
        self._sent_since = 0.0  # monotonic time the oldest of _sent was reported
        self._stored_since_handover = 0  # batches stored since the last hand-over
        self._rejected: set[str] = set()
        self._patched = (0, -1)  # (epoch, version) of the last desired patch applied
        self._last_offer = 0.0
        self.counters = UplinkCounters()
        self.last_seq: int | None = None
        # close() left the worker blocked in a call (a connect, the IoT Edge workload API):
        # the caller should end the process rather than wait for it.
        self.abandoned = False
        self.last_confirmed: float | None = None

    # -- the loop's side --------------------------------------------------------------------

    def describe(self) -> str:
        if self.identity is None:
            assert self._provisioner is not None
            return f"{self._provisioner.describe()} over {self.transport.describe()}"
        return f"{self.identity.describe()} over {self.transport.describe()}"

    def attach(self, agent: AgentHooks) -> None:
        """Start the worker (connect, twin, sends) for this agent."""
        if self._thread is not None:
            raise RuntimeError("the uplink is attached already")
        self._agent = agent
        self._thread = threading.Thread(target=self._run, name="iothub-uplink", daemon=True)
        self._thread.start()

    def pump(self, outbox: Outbox) -> None:
        """Confirm what the worker sent; hand it the next batches. Returns at once."""
        if self._outbox is not outbox:
            self._outbox = outbox
            # Batches stored during a turn go to the worker at once (in send order, within
            # the window): a turn that ends an interval stores hundreds, and the sends
            # overlap their fsyncs instead of starting after the last.
            outbox.on_stored = lambda: self._refill(outbox)
        self._take_results(outbox)
        now = time.monotonic()
        if (self._agent is not None and self._link.is_(LinkState.CONNECTED)
                and now - self._last_offer >= self.options.report_check_s):
            self._last_offer = now
            self.offer_report(self._agent.reported_document())
        self._hand_over(outbox)

    def _refill(self, outbox: Outbox) -> None:
        """After a batch was stored: take the worker's results (the window frees up) and
        hand it what is next. No confirm because the worker is idle: while a turn stores
        batches, the worker acknowledges each before the next is stored, and a group per
        batch doubled the fsyncs of storing (the turn's pump confirms them together)."""
        self._take_results(outbox, idle_confirm=False)
        self._stored_since_handover += 1
        if self._stored_since_handover >= min(self.options.handover_every, self.options.window):
            self._hand_over(outbox)

    def _hand_over(self, outbox: Outbox) -> None:
        """Hand the worker the next batches in send order, up to the window (loop thread)."""
        self._stored_since_handover = 0
        if not self._accepting or len(self._inflight) > self.options.window // 2:
            return  # the worker has enough; it wakes the loop when it is down to half
        config = self._agent.config if self._agent is not None else None
        fmt = config.upload.format.value if config is not None else "msgpack"
        max_bytes = config.upload.max_message_bytes if config is not None else MAX_MESSAGE_BYTES
        handed = sum(self._inflight.values())
        limit = len(self._inflight) + len(self._sent) + len(self._rejected) + self.options.window
        items: list[_Item] = []
        for info in outbox.pending(limit):
            if len(self._inflight) >= self.options.window or (
                    self._inflight and handed + info.size > self.options.window_bytes):
                break
            if info.id in self._inflight or info.id in self._sent or info.id in self._rejected:
                continue
            batch = outbox.read(info.id)
            if batch is None:
                continue  # removed, or set aside as corrupt, since pending()
            self._inflight[info.id] = info.size
            handed += info.size
            items.append(_Item(info.id, info.seq, info.prio, batch.payload, fmt, max_bytes))
        if not items:
            return
        with self._lock:
            if self._accepting:
                self._queue.extend(items)
                self._lock.notify_all()
            else:
                self._results.extend((i.batch_id, i.seq, _RETURNED) for i in items)

    def _take_results(self, outbox: Outbox, *, confirm_now: bool = False,
                      idle_confirm: bool = True) -> None:
        with self._lock:
            results = list(self._results)
            self._results.clear()
        for batch_id, seq, outcome in results:
            size = self._inflight.pop(batch_id, 0)
            if outcome == _SENT:
                if not self._sent:
                    self._sent_since = time.monotonic()
                self._sent[batch_id] = seq
                self._sent_bytes += size
            elif outcome == _REJECTED:
                self._rejected.add(batch_id)
                self.counters.add("rejected")
        if not self._sent:
            return
        # A group commit: one state write and one directory fsync for many batches. One pair
        # per batch, in the loop while the worker sends, was the largest cost the profile
        # found (docs/uplink.md, Speed and size); a crash sends the unconfirmed again.
        if not (confirm_now or (idle_confirm and not self._inflight)
                or len(self._sent) >= self.options.confirm_batches
                or self._sent_bytes >= self.options.window_bytes
                or time.monotonic() - self._sent_since >= self.options.confirm_after_s):
            return
        sent, self._sent, self._sent_bytes = self._sent, {}, 0
        try:
            confirmed = set(outbox.confirm_many(list(sent)))
        except OutboxError as err:
            # The batches stay and go out again: duplicates, never a loss.
            seqs = sorted(sent.values())
            log.error("iothub: cannot confirm batches %d..%d: %s", seqs[0], seqs[-1], err)
            return
        for batch_id, seq in sent.items():
            if batch_id in confirmed:
                self.counters.add("delivered")
            else:
                self.counters.add("confirm_missing")  # evicted or expired meanwhile
            self.last_seq = seq
        self.last_confirmed = wall_time()

    def offer_report(self, doc: dict[str, Any]) -> None:
        """The reported document as it is now; the worker sends what changed."""
        with self._lock:
            self._report_doc = doc
            self._lock.notify_all()

    def _wake_loop(self) -> None:
        if self._agent is not None and self._outbox is not None:
            outbox = self._outbox
            self._agent.call_soon(lambda: self.pump(outbox))

    def status(self) -> dict[str, Any]:
        ident = self.identity
        retry = max(0.0, self._retry_at - time.monotonic()) if not self._link.is_(LinkState.CONNECTED) else 0.0
        dps: dict[str, Any] = {}
        if self._provisioner is not None:
            dps = {"dps": dict(self._provisioner.status(), state=self._dps_state)}
        return {
            "kind": "iothub", "hub": ident and ident.hostname, "gateway": ident and ident.gateway,
            "transport": self.transport.describe(),
            "identity": ident and ident.client_id, "auth": ident and ident.auth,
            "state": self._link.describe(), **dps,
            "since": int(self._link.since), "state_changes": self._link.entered(), "last_seq": self.last_seq,
            "last_confirmed": None if self.last_confirmed is None else int(self.last_confirmed),
            "in_flight": len(self._inflight) + len(self._sent), "retry_in_s": round(retry, 1),
            "identity_change": self._identity_change,
            **self.counters.snapshot(),
        }

    def close(self) -> None:
        """Wait up to close_grace_s for the batches handed over (confirming those sent), then
        stop the worker and shut the client down (with a deadline)."""
        outbox = self._outbox
        if outbox is not None:
            outbox.on_stored = None
        deadline = time.monotonic() + self.options.close_grace_s
        while (self._inflight and self._link.is_(LinkState.CONNECTED) and outbox is not None
               and time.monotonic() < deadline):
            with self._lock:
                if not self._results:
                    self._lock.wait(0.05)
            self._take_results(outbox, confirm_now=True)
        with self._lock:
            self._accepting = False
            self._stopping.set()
            self._lock.notify_all()
        if self._thread is not None:
            # A worker inside a blocking call is abandoned (a daemon thread): the agent's
            # exit must not wait for a hub that does not answer.
            self._thread.join(min(self.options.call_timeout_s, 5.0))
            self.abandoned = self._thread.is_alive()
        client, self._client = self._client, None
        if client is not None:
            try:
                call_with_timeout(client.shutdown, 5.0, "shutdown")
            except CallTimeout:
                self.abandoned = True
            except Exception as err:  # noqa: BLE001
                log.debug("iothub: shutdown: %s", err)
        self._return_all()  # what the hub did not acknowledge stays in the outbox
        if outbox is not None:
            self._take_results(outbox, confirm_now=True)
        if self.abandoned:
            log.warning("iothub: a call is still blocked; it is abandoned")
        self._link.to(LinkState.CLOSED)

    # -- desired properties (run in the loop's thread) ------------------------------------------

    def _apply_desired(self, doc: Any, *, full: bool, epoch: int) -> dict[str, Any] | None:
        agent = self._agent
        assert agent is not None
        version = doc.get("$version") if isinstance(doc, dict) else None
        if isinstance(version, int) and not isinstance(version, bool):
            if full and self._patched[0] == epoch and self._patched[1] > version:
                # A patch newer than this read was applied already: the read is stale.
                return agent.reported_document()
            if not full:
                self._patched = (epoch, version)
        update = agent.store.apply_desired(doc) if full else agent.store.apply_patch(doc)
        agent.apply(update)
        return agent.reported_document()

    def _on_patch(self, patch: Any) -> None:
        """A desired patch (paho's thread): queue it for the loop, never block."""
        epoch = self._epoch
        self.counters.add("desired_patches")
        agent = self._agent
        if agent is None:
            return

        def apply() -> None:
            doc = self._apply_desired(patch, full=False, epoch=epoch)
            if doc is not None:
                self.offer_report(doc)

        agent.call_soon(apply)

    def _on_connection_change(self) -> None:
        with self._lock:
            self._lock.notify_all()

    # -- the worker -------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        secrets = self.identity.secrets() if self.identity is not None else []
        if self._provisioner is not None:
            secrets += self._provisioner.secrets()
        for secret in secrets + self._old_secrets + self.transport.secrets():
            text = text.replace(secret, "***")
        return _SIG.sub(lambda m: m.group(1) + "***", text)

    def _run(self) -> None:
        log.info("iothub: connecting to %s", self.describe())
        while not self._stopping.is_set():
            try:
                if self._link_up():
                    self._serve()
            except Exception as err:  # the worker must outlive any surprise
                log.exception("iothub: worker error")
                self._lost(f"internal error: {type(err).__name__}: {err}", discard=True)

    def _link_up(self) -> bool:
        client = self._client
        connected = self._link.is_(LinkState.CONNECTED)
        if connected and client is not None and client.connected:
            if self._token_renew_at is not None and wall_time() >= self._token_renew_at:
                self._renew_token()
                return False
            # A rotation that loads drops the connection: reconnect with the new identity.
            return not (self._identity_files_changed() and self._rotate())
        if connected:
            self._lost(client.lost_reason if client is not None else "connection lost",
                       discard=True)
        now = time.monotonic()
        if self._refused:
            assert self.identity is not None  # DPS re-provisions instead (_connect_failed)
            sig = files_signature(identity_files(self.identity))
            sas_token = self.identity.key is not None or self.identity.edge
            clock_set = sas_token and CLOCK.counts() != self._refused_jumps
            if clock_set:
                log.info("iothub: the wall clock was set since the hub refused the SAS token: "
                         "trying again")
            elif sig == self._identity_sig and now < self._retry_at:
                self._stopping.wait(min(5.0, self._retry_at - now))
                return False
            if sig != self._identity_sig and self._reload_identity is not None:
                self._identity_sig = sig
                try:
                    self._adopt(self._reload_identity())
                except IdentityError as err:
                    self._link.to(LinkState.FAILED, self._redact(str(err)))
                    return False
                self._discard_client()
            self._refused = False
        elif now < self._retry_at:
            self._stopping.wait(self._retry_at - now)
            return False
        if self._stopping.is_set():
            return False
        dps = self._provisioner
        if dps is not None and (self.identity is None or self._reprovision) and not self._provision(dps):
            return False
        if self._identity_files_changed() and self._rotate():
            return False  # rotated while away: the next attempt uses the new identity
        self._connect()
        return self._link.is_(LinkState.CONNECTED)

    def _identity_files_changed(self) -> bool:
        """Whether the identity's files changed since they were last loaded; looks at most
        once per identity_check_s."""
        now = time.monotonic()
        if self._reload_identity is None or self.identity is None or now < self._next_identity_check:
            return False
        self._next_identity_check = now + self.options.identity_check_s
        return files_signature(identity_files(self.identity)) != self._identity_sig

    def _adopt(self, new: HubIdentity) -> None:
        old = self.identity
        if old is not None:
            self._old_secrets.extend(s for s in old.secrets() if s not in self._old_secrets)
        self.identity = new
        log.info("iothub: the identity changed: %s", self.describe())

    def _rotate(self) -> bool:
        """The identity's files changed while connected. Load and check the new identity:
        usable, drop the connection (its batches go back) and reconnect with it at once;
        not, keep the connection and report why. True when reconnecting."""
        assert self._reload_identity is not None and self.identity is not None
        self._identity_sig = files_signature(identity_files(self.identity))
        self._identity_changes += 1
        try:
            new = self._reload_identity()
            check_renewed(new, wall_time())
        except IdentityError as err:
            reason = self._redact(str(err))
            self._identity_change = {"state": "refused", "reason": reason, "at": int(wall_time()),
                                     "count": self._identity_changes}
            log.error("iothub: the identity's files changed but the new identity is not used "
                      "(still %s): %s", self.identity.client_id, reason)
            return False
        self._adopt(new)
        self._identity_sig = files_signature(identity_files(new))
        self._identity_change = {"state": "applied", "reason": None, "at": int(wall_time()),
                                 "count": self._identity_changes}
        self._reconnect_now("the identity changed: reconnecting")
        return True

    def _renew_token(self) -> None:
        """The SAS token expires soon: let the batches in flight finish (up to
        call_timeout_s), then connect again with a new token. What is not acknowledged by
        then goes back and out on the next connection, once."""
        log.info("iothub: the SAS token expires soon; connecting with a new one")
        with self._lock:
            self._accepting = False  # the loop hands nothing more to this connection
        deadline = time.monotonic() + self.options.call_timeout_s
        client = self._client
        while (client is not None and client.connected and time.monotonic() < deadline
               and not self._stopping.is_set()):
            with self._lock:
                if not self._unacked:
                    break
                self._lock.wait(0.05)
        self._reconnect_now("renewing the SAS token")

    def _reconnect_now(self, reason: str) -> None:
        """Drop the connection (what it holds goes back) and connect again without backoff."""
        with self._lock:
            self._link.to(LinkState.DISCONNECTED, reason)
            self._accepting = False
        self._return_all()
        self._attempts = 0
        self._retry_at = 0.0
        self._discard_client()
        self._wake_loop()

    def _provision(self, provisioner: Provisioner) -> bool:
        """Ask DPS for the hub (blocking, with the connect deadline); on failure the link
        waits for the next attempt with the backoff, as after a failed connect."""
        self._link.to(LinkState.CONNECTING)
        self._dps_state = "provisioning"
        log.info("dps: provisioning with %s", provisioner.describe())
        try:
            assignment = provisioner.provision(self.options.connect_timeout_s)
        except Exception as err:  # noqa: BLE001
            failure = classify(err)
            reason = self._redact(failure.reason)
            if failure.outcome is Outcome.REFUSED and not reason.startswith("TLS"):
                reason = ("DPS refused the credentials (wrong key or certificate, or no "
                          "enrollment for this registration id)")
            self.counters.add("provision_errors")
            self._attempts += 1
            delay = backoff_delay(self._attempts, self.options.backoff_min_s,
                                  self.options.backoff_max_s, self._rng)
            self._retry_at = time.monotonic() + delay
            self._dps_state = f"failed: {reason}"
            if self._attempts <= 3 or self._attempts % 20 == 0:
                log.warning("dps: provisioning failed (attempt %d): %s; retrying in %.1f s",
                            self._attempts, reason, delay)
            self._link.to(LinkState.DISCONNECTED, f"provisioning failed: {reason}")
            return False
        self.counters.add("provisions")
        self._discard_client()
        self.identity = provisioner.identity(assignment)
        self._reprovision = False
        self._dps_state = "assigned"
        log.info("dps: assigned to IoT Hub %s as %s", assignment.assigned_hub, assignment.device_id)
        return True

    def _make_client(self) -> MqttClient:
        """A new client for the identity and the transport; a SAS token made (or signed by
        the IoT Edge workload API) now."""
        ident = self.identity
        assert ident is not None
        ca_pem = ident.ca_pem
        password: str | None = None
        self._token_renew_at = None
        if ident.edge or ident.key is not None:
            ttl = self.options.sas_ttl_s
            expiry = int(wall_time()) + ttl
            resource = f"{ident.hostname}/devices/{ident.device_id}"
            if ident.module_id is not None:
                resource += f"/modules/{ident.module_id}"
            if ident.edge:
                from agent.uplink.edge_workload import WorkloadApi

                # The Edge runtime holds the module's key and the Edge hub's CA.
                workload = WorkloadApi(os.environ)
                ca_pem = workload.trust_bundle()
                password = sas.token(resource, expiry, workload.sign)
            else:
                assert ident.key is not None
                password = sas.key_token(ident.key, resource, expiry)
            self._token_renew_at = expiry - min(sas.RENEW_MARGIN_S, ttl // 5)
        endpoint = Endpoint(
            host=ident.gateway or ident.hostname, client_id=ident.client_id,
            username=hub_username(ident.hostname, ident.device_id, ident.module_id),
            password=password, ca_pem=ca_pem,
            cert_file=None if password is not None else ident.cert_file,
            key_file=None if password is not None else ident.key_file,
            websockets=self.transport.websockets, proxy=self.transport.proxy,
            keep_alive_s=self.options.keep_alive_s)
        return MqttClient(endpoint, TWIN_RESPONSES, on_sent=self._on_sent,
                          on_message=self._on_message, on_lost=self._on_connection_change)

    def _apply_in_loop(self, desired: Any, epoch: int) -> dict[str, Any] | None:
        """The loop applies a full desired document; its reported document after that, or
        None when the loop did not get to it in time."""
        agent = self._agent
        assert agent is not None
        box: list[dict[str, Any] | None] = []
        done = threading.Event()

        def apply() -> None:
            try:
                box.append(self._apply_desired(desired, full=True, epoch=epoch))
            finally:
                done.set()

        agent.call_soon(apply)
        deadline = time.monotonic() + self.options.apply_timeout_s
        while not done.wait(0.1):
            if self._stopping.is_set() or time.monotonic() > deadline:
                log.warning("iothub: the loop did not apply the twin within %g s",
                            self.options.apply_timeout_s)
                return None
        return box[0] if box else None

    def _connect(self) -> None:
        opts = self.options
        self._link.to(LinkState.CONNECTING)
        self._epoch += 1
        epoch = self._epoch
        try:
            self._discard_client()  # one client per connection
            client = self._client = self._make_client()
            # Subscribed before the read: a patch made after it is pushed to us.
            client.connect(opts.connect_timeout_s, (TWIN_RESPONSES + "#", TWIN_DESIRED + "#"))
            twin = self._get_twin(client)
            doc = self._apply_in_loop(twin.get("desired", {}), epoch)
            if self._stopping.is_set():
                return
            self._reported.reset(twin.get("reported") or {})
            if doc is not None:
                self._send_report(doc, force=True)
        except Exception as err:  # noqa: BLE001
            self._connect_failed(err)
            return
        with self._lock:
            self._link.to(LinkState.CONNECTED)
            self._accepting = True
        self._attempts = 0
        self.counters.add("connects")
        log.info("iothub: connected to %s", self.identity and self.identity.hostname)
        self._wake_loop()

    def _get_twin(self, client: MqttClient) -> dict[str, Any]:
        answer = check_status("get_twin", client.request(
            "$iothub/twin/GET/", b"", self.options.call_timeout_s, "get_twin"))
        twin = answer.json()
        if not isinstance(twin, dict):
            raise TypeError("get_twin: the twin is not a JSON object")
        return twin

    def _through_proxy(self, err: BaseException) -> bool:
        """Whether a failed connect failed at the proxy (PySocks' errors, under paho's)."""
        if self.transport.proxy is None:
            return False
        import socks  # type: ignore[import-untyped]  # paho's proxy support (PySocks)

        seen: BaseException | None = err
        for _ in range(10):
            if seen is None:
                return False
            if isinstance(seen, socks.ProxyError):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def _connect_failed(self, err: Exception) -> None:
        failure = classify(err)
        reason = self._redact(failure.reason)
        if self._through_proxy(err):
            proxy = self.transport.proxy
            assert proxy is not None
            reason = f"proxy {proxy.host}:{proxy.port}: {reason}"
        if failure.abandon_client:
            self.counters.add("timeouts")
            self._discard_client()
        if failure.outcome is Outcome.REFUSED and self._provisioner is not None:
            # The assigned hub does not know us (any more): the device was moved to another
            # hub, or its enrollment changed. DPS says where it belongs now.
            self._reprovision = True
            self._provisioner.forget()
            self._discard_client()
            self._attempts += 1
            delay = backoff_delay(self._attempts, self.options.backoff_min_s,
                                  self.options.backoff_max_s, self._rng)
            self._retry_at = time.monotonic() + delay
            self._dps_state = f"refused by the hub: {reason}"
            log.error("iothub: %s: %s; provisioning again in %.1f s",
                      self.identity and self.identity.client_id, reason, delay)
            self._link.to(LinkState.FAILED, f"{reason}; provisioning again")
            return
        if failure.outcome is Outcome.REFUSED:
            assert self.identity is not None
            self._refused = True
            self._refused_jumps = CLOCK.counts()
            self._retry_at = time.monotonic() + self.options.refused_retry_s
            self._link.to(LinkState.FAILED, reason)
            log.error("iothub: %s: %s; not retrying until the identity changes, the wall clock "
                      "is set (a SAS token) or %g s pass",
                      self.identity.client_id, reason, self.options.refused_retry_s)
            self._discard_client()
            return
        # RECONNECT, and REJECTED (a request of the connect sequence refused): try again.
        self._attempts += 1
        delay = backoff_delay(self._attempts, self.options.backoff_min_s,
                              self.options.backoff_max_s, self._rng)
        self._retry_at = time.monotonic() + delay
        if self._attempts <= 3 or self._attempts % 20 == 0:
            log.warning("iothub: cannot connect (attempt %d): %s; retrying in %.1f s",
                        self._attempts, reason, delay)
        self._link.to(LinkState.DISCONNECTED, reason)

    def _lost(self, reason: str, *, discard: bool = True) -> None:
        """The connection is gone: return what was queued or not acknowledged, schedule a
        reconnect. The client is always dropped (`discard` stays for the callers' reading:
        a client is never connected twice)."""
        with self._lock:
            self._link.to(LinkState.DISCONNECTED, reason)
            self._accepting = False
        self._return_all()
        self.counters.add("disconnects")
        self._attempts += 1
        delay = backoff_delay(self._attempts, self.options.backoff_min_s,
                              self.options.backoff_max_s, self._rng)
        self._retry_at = time.monotonic() + delay
        reason = self._redact(reason)
        log.warning("iothub: %s; reconnecting in %.1f s", reason, delay)
        self._discard_client()
        self._wake_loop()

    def _return_all(self) -> None:
        """Every batch queued or waiting for PUBACKs goes back to the loop (stays in the
        outbox). A PUBACK that comes later for one of them finds nothing: the batch is
        sent again on the next connection (a copy there, never two on one)."""
        with self._lock:
            for flight in self._unacked.values():
                self._results.append((flight.item.batch_id, flight.item.seq, _RETURNED))
            self._unacked.clear()
            while self._queue:
                item = self._queue.popleft()
                self._results.append((item.batch_id, item.seq, _RETURNED))

    def _discard_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return

        def shut() -> None:
            try:
                call_with_timeout(client.shutdown, 10.0, "shutdown")
            except Exception as err:  # noqa: BLE001
                log.debug("iothub: shutting an old client down: %s", err)

        threading.Thread(target=shut, name="iothub-discard", daemon=True).start()

    def _serve(self) -> None:
        """One unit of work while connected: a report, then every queued batch published
        back to back; else wait a little (and check the PUBACKs' deadline)."""
        with self._lock:
            if self._report_doc is None and not self._queue and not self._stopping.is_set():
                self._lock.wait(0.5 if not self._unacked else 0.1)
            doc, self._report_doc = self._report_doc, None
            items = list(self._queue)
            self._queue.clear()
        client = self._client
        if client is None or not client.connected:
            with self._lock:
                self._queue.extendleft(reversed(items))
            if doc is not None:
                self.offer_report(doc)
            return
        if doc is not None:
            try:
                self._send_report(doc)
            except Exception as err:  # noqa: BLE001
                failure = classify(err)
                if failure.outcome is Outcome.REJECTED:
                    log.error("iothub: the reported properties were refused: %s",
                              self._redact(failure.reason))
                else:
                    with self._lock:
                        self._queue.extendleft(reversed(items))
                    self._failed_call(failure, None)
                    return
        for at, item in enumerate(items):
            if not self._send(client, item):
                with self._lock:
                    self._queue.extendleft(reversed(items[at + 1:]))
                return
        oldest = client.oldest_unacked()
        if oldest is not None and time.monotonic() - oldest > self.options.call_timeout_s:
            self._failed_call(classify(CallTimeout(
                f"a PUBACK did not come within {self.options.call_timeout_s:g} s")), None)

    def _send_report(self, doc: dict[str, Any], *, force: bool = False) -> None:
        patch = self._reported.patch(doc)
        if patch is None:
            return
        now = time.monotonic()
        counters_only = set(patch) <= VOLATILE_REPORTED
        if counters_only and not force and now - self._last_counters < self.options.counters_every_s:
            return  # counters alone wait for their next slot
        client = self._client
        if client is None:
            raise CallTimeout("patch_reported: no client")
        check_status("patch_reported", client.request(
            "$iothub/twin/PATCH/properties/reported/", json.dumps(patch).encode(),
            self.options.call_timeout_s, "patch_reported"))
        self._reported.mark_sent(patch)
        self.counters.add("reported_patches")
        if set(patch) & VOLATILE_REPORTED:
            self._last_counters = now

    def _send(self, client: MqttClient, item: _Item) -> bool:
        """Publish the batch's messages (QoS 1); _on_sent completes it on the last PUBACK.
        False when the connection failed under it (the batch is queued again)."""
        try:
            parts = encode_batch(item.payload, item.fmt, item.max_bytes)
        except UnsendableBatch as err:
            log.error("iothub: batch %d cannot be sent (%s): it stays in the outbox until it "
                      "expires, and is counted then", item.seq, err)
            self._result(item, _REJECTED)
            return True
        ident = self.identity
        assert ident is not None
        prefix = telemetry_prefix(ident.device_id, ident.module_id)
        flight = _Flight(item, len(parts))
        with self._lock:
            self._unacked[item.batch_id] = flight
        for part in parts:
            msg_id = f"{self.agent_id}:{item.seq}" + (f":{part.index}" if part.count > 1 else "")
            props = {"v": str(SCHEMA_VERSION), "seq": str(item.seq), "prio": item.prio,
                     "agent": self.agent_id}
            if part.count > 1:
                props["part"] = str(part.index)
                props["parts"] = str(part.count)
            if item.fmt == "json" and part.content_type != JSON_TYPE:
                self.counters.add("json_fallback")
            topic = prefix + property_bag(msg_id, part.content_type, part.content_encoding,
                                          part.security, props)
            try:
                client.send(topic, part.body, flight)
            except Exception as err:  # noqa: BLE001
                with self._lock:
                    mine = self._unacked.pop(item.batch_id, None) is flight
                failure = classify(err)
                if failure.outcome is Outcome.REJECTED:  # e.g. the client's size check
                    log.error("iothub: batch %d cannot be sent: %s", item.seq,
                              self._redact(failure.reason))
                    if mine:
                        self._result(item, _REJECTED)
                    return True
                if mine:
                    with self._lock:
                        self._queue.appendleft(item)  # returned with the rest, in order
                self._failed_call(failure, None)
                return False
            self.counters.add("messages")
        if len(parts) > 1:
            self.counters.add("parts", len(parts))
        return True

    def _on_sent(self, tag: object) -> None:
        """A PUBACK (paho's thread): the batch is sent when its last message is acknowledged."""
        assert isinstance(tag, _Flight)
        with self._lock:
            tag.remaining -= 1
            if tag.remaining > 0 or self._unacked.get(tag.item.batch_id) is not tag:
                return
            del self._unacked[tag.item.batch_id]
        self._result(tag.item, _SENT)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """A PUBLISH that is not an answer (paho's thread): a desired patch, or nothing."""
        if not topic.startswith(TWIN_DESIRED):
            log.debug("iothub: a message on %s ignored", topic[:120])
            return
        try:
            patch = json.loads(payload)
        except ValueError:
            log.warning("iothub: a desired patch that is not JSON was ignored")
            return
        self._on_patch(patch)

    def _result(self, item: _Item, outcome: str) -> None:
        with self._lock:
            self._results.append((item.batch_id, item.seq, outcome))
            # The loop refills when the worker is down to half and confirms in groups: a
            # wake-up per PUBACK cost it a turn per message. Wake it at half and at empty
            # (and at once for anything but a send).
            left = len(self._queue) + len(self._unacked)
            wake = outcome != _SENT or left in (0, self.options.window // 2)
        if wake:
            self._wake_loop()

    def _failed_call(self, failure: Failure, item: _Item | None) -> None:
        self.counters.add("send_errors")
        if item is not None:
            with self._lock:
                self._queue.appendleft(item)  # returned with the rest, in order
        if failure.abandon_client:
            self.counters.add("timeouts")
        # Never reconnect a client whose call failed: paho would send what it still holds
        # (sent and unacknowledged: again with DUP; only queued: for the first time) when
        # that client reconnected, while the worker sends the batch again too: two copies on
        # one connection. A new client has nothing queued, so each connection carries a
        # batch once (docs/uplink.md, the bound on copies).
        self._lost(f"send failed: {failure.reason}", discard=True)

