"""The IoT Hub uplink: batches from the outbox to Azure IoT Hub with azure-iot-device, the
module twin's desired properties into the configuration, the reported properties back.
docs/uplink.md describes the behaviour; this is the map of the code.

Threads. The SDK's sync client blocks, so it lives in one worker thread (`iothub-uplink`);
the agent's loop never calls it. Every blocking SDK call runs in a throwaway thread and is
waited for with a deadline (`call_with_timeout`): a hub that stops answering costs the worker
a timeout, never the loop a turn. The loop talks to the worker through `pump()`, which returns
at once: it confirms the batches the worker reports sent (outbox.confirm, in the loop's
thread: the only place batches leave the outbox) and hands the next ones over, at most
`window` in flight, in the outbox's send order. The worker sends them one after the other, so
they arrive in that order; when a send fails, the batch and those queued behind it go back
(they stay in the outbox) and the worker reconnects with exponential backoff and jitter.

Twin. On every (re)connect the worker reads the whole twin, has the loop apply its desired
document (ConfigStore.apply_desired, then Agent.apply) and build the reported document, sets
the desired-patch handler (once per client; the SDK keeps the subscription in its session),
reads the twin again if a patch could have slipped in between, and reports what changed
since the twin's reported section (ReportedState). The patch handler runs on the SDK's thread
and only queues the patch for the loop (Agent.call_soon). The SDK's own twin read after a
reconnect arrives as a patch holding the full desired document, and is applied as a patch.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgpack
import orjson

from agent.config import Config, ConfigStore, ConfigUpdate, ReportedState
from agent.envelope import SCHEMA_VERSION
from agent.outbox import Outbox, OutboxError
from agent.uplink.identity import HubIdentity, IdentityError, file_signature

log = logging.getLogger("agent.uplink")

T = TypeVar("T")

MSGPACK_TYPE = "application/msgpack"
JSON_TYPE = "application/json"
# The largest Upload_MaxMessageBytes (agent.config): a body this size plus the properties the
# uplink adds stays under IoT Hub's 256 KiB.
HUB_BODY_LIMIT = 253952
# Reported keys that change all the time: a patch of only these is rate-limited.
VOLATILE_REPORTED = frozenset({"counters", "outbox_depth"})


class AgentHooks(Protocol):
    """What the uplink needs of agent.pipeline.Agent."""

    store: ConfigStore
    config: Config

    def call_soon(self, fn: Callable[[], None]) -> None: ...

    def apply(self, update: ConfigUpdate) -> None: ...

    def reported_document(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class UplinkOptions:
    """window: batches handed to the worker and not yet confirmed. Backoff: the delay before
    reconnect attempt n is backoff_min_s * 2**(n-1), capped at backoff_max_s, times a random
    factor in [0.75, 1.25] (then clamped to the bounds again). refused_retry_s: after the hub
    refused the credentials or TLS failed, the next attempt waits for the identity's file to
    change, or this long. report_check_s: how often the loop offers the reported document;
    counters_every_s: at most one patch of counters only (VOLATILE_REPORTED) per this long.
    close_grace_s: how long close() waits for batches already handed over."""

    window: int = 4
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

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 64:
            raise ValueError(f"window={self.window}: 1..64")
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            raise ValueError("backoff bounds: 0 < min <= max")


class CallTimeout(Exception):
    """A blocking SDK call did not return in time (it is left running in its thread)."""


def call_with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a daemon thread; its result or its exception, or CallTimeout after `timeout`
    seconds (the call is abandoned; the caller treats the client as unusable)."""
    box: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as err:  # handed to the caller's thread  # noqa: BLE001
            box.append((False, err))
        finally:
            done.set()

    threading.Thread(target=run, name=f"iothub-{what}", daemon=True).start()
    if not done.wait(timeout):
        raise CallTimeout(f"{what} did not return within {timeout:g} s")
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Seconds before reconnect attempt `attempt` (1, 2, ...): exponential, capped, jittered
    so that a fleet that lost the hub together does not come back together."""
    base = min(hi, lo * 2.0 ** min(max(attempt, 1) - 1, 40))
    return min(hi, max(lo, base * rng.uniform(0.75, 1.25)))


# -- message encoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One IoT Hub message of a batch: the whole batch, or part `index` of `count`."""

    body: bytes
    content_type: str
    content_encoding: str | None
    index: int
    count: int
    security: bool


class UnsendableBatch(ValueError):
    """A batch that no message can carry (never expected: batches are sized for the hub)."""


def _json_default(value: Any) -> str:
    # As agent.jsonl: msgpack bin as text, \xNN for the bytes that are not UTF-8.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _msgpack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _decode(payload: bytes) -> tuple[dict[str, Any], list[Any]]:
    try:
        env = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                              unicode_errors="backslashreplace")
    except (ValueError, msgpack.UnpackException) as err:
        raise UnsendableBatch(f"not a msgpack envelope: {err}") from err
    if not isinstance(env, dict) or not isinstance(env.get("events"), list):
        raise UnsendableBatch("not an envelope (a map with an events array)")
    events = env.pop("events")
    return env, events


def encode_batch(payload: bytes, fmt: str, max_bytes: int) -> list[Part]:
    """The messages that carry one stored batch (an envelope, docs/outbox.md).

    msgpack: the envelope as stored, one message. json: the same envelope as JSON (orjson; bin
    values as text with \\xNN escapes, as `micro-agent decode` prints them), content encoding
    utf-8, marked as a security message. A JSON form longer than max_bytes (JSON is larger
    than msgpack) is split into parts: each part is a whole envelope with the same header and
    seq, its share of the events in order, `n` its own count, `part` (1-based) and `parts`;
    the first part carries the drops, the others an empty map. A part of a single event still
    too long as JSON is sent as msgpack instead (content type application/msgpack), so that no
    event is lost. A msgpack envelope longer than the hub allows (never made by the agent) is
    split the same way."""
    if fmt != "json":
        if len(payload) <= HUB_BODY_LIMIT:
            return [Part(payload, MSGPACK_TYPE, None, 1, 1, False)]
        head, events = _decode(payload)
        return _split(head, events, _msgpack, MSGPACK_TYPE, None, False, min(max_bytes, HUB_BODY_LIMIT))
    try:
        head, events = _decode(payload)
    except UnsendableBatch:
        if len(payload) <= HUB_BODY_LIMIT:
            return [Part(payload, MSGPACK_TYPE, None, 1, 1, False)]  # as stored, not lost
        raise
    body = _json({**head, "events": events})
    if len(body) <= max_bytes:
        return [Part(body, JSON_TYPE, "utf-8", 1, 1, True)]
    return _split(head, events, _json, JSON_TYPE, "utf-8", True, max_bytes)


def _split(head: dict[str, Any], events: list[Any], dumps: Callable[[Any], bytes], ctype: str,
           encoding: str | None, security: bool, max_bytes: int) -> list[Part]:
    sizes = [len(dumps(e)) + 1 for e in events]  # +1: the comma between JSON elements
    # The header of any part, with the widest n / part / parts and an array32 header.
    probe = dict(head, n=0xFFFFFFFF, part=0xFFFF, parts=0xFFFF, events=[])
    budget = max_bytes - len(dumps(probe)) - 8
    chunks: list[list[Any]] = []
    current: list[Any] = []
    used = 0
    for event, size in zip(events, sizes):
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(event)
        used += size
    if current or not chunks:
        chunks.append(current)
    parts: list[Part] = []
    for i, chunk in enumerate(chunks):
        doc = dict(head)
        doc["n"] = len(chunk)
        if i > 0:
            doc["drops"] = {}
        if len(chunks) > 1:
            doc["part"] = i + 1
            doc["parts"] = len(chunks)
        doc["events"] = chunk
        body = dumps(doc)
        if len(body) <= max_bytes:
            parts.append(Part(body, ctype, encoding, i + 1, len(chunks), security))
            continue
        packed = _msgpack(doc)  # one event too long as JSON: msgpack keeps it whole
        if len(packed) > HUB_BODY_LIMIT:
            raise UnsendableBatch(f"an event of {len(packed)} bytes exceeds any message")
        parts.append(Part(packed, MSGPACK_TYPE, None, i + 1, len(chunks), False))
    return parts


# -- the uplink ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    batch_id: str
    seq: int
    prio: str
    payload: bytes
    fmt: str
    max_bytes: int


_SENT, _RETURNED, _REJECTED = "sent", "returned", "rejected"


def _cause_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        chain.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return chain


def classify(err: BaseException) -> tuple[str, bool]:
    """(reason, permanent) of a failed connect or call. Permanent: the hub refused the
    credentials, or TLS failed on a certificate; retrying cannot help until the identity or
    the CA changes."""
    chain = _cause_chain(err)
    names = [type(e).__name__ for e in chain]
    ssl_text = next((str(e) for e in chain if type(e).__name__ in ("SSLError", "SSLCertVerificationError")), "")
    if "TlsExchangeAuthError" in names:
        why = ssl_text or "certificate verify failed"
        return (f"TLS: the hub's certificate is not trusted ({why}); check --ca-file / "
                "$IOTHUB_CA_FILE"), True
    if "CredentialError" in names or "UnauthorizedError" in names:
        return ("authentication refused by the hub (wrong key or certificate, or the identity "
                "is disabled or unknown)"), True
    if ssl_text and re.search(r"alert (unknown ca|bad certificate|certificate)", ssl_text):
        return f"TLS: the hub refused the client certificate ({ssl_text})", True
    if isinstance(err, CallTimeout):
        return str(err), False
    inner = chain[-1]
    if inner is not err and str(inner):
        return f"{type(err).__name__}: {type(inner).__name__}: {inner}", False
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, False


_SIG = re.compile(r"(sig=|SharedAccessKey=|SharedAccessSignature )[^&;\s]+")


class IotHubUplink:
    """Uplink (agent.pipeline) to Azure IoT Hub. Make it, hand it to the Agent, then
    `attach(agent)` before agent.run(): the worker connects in the background.

    `reload_identity`, when given, loads the identity again (the command line's sources); it
    is called after the hub refused the credentials once the identity's file changed."""

    def __init__(self, identity: HubIdentity, agent_id: str, options: UplinkOptions | None = None,
                 *, reload_identity: Callable[[], HubIdentity] | None = None,
                 rng: random.Random | None = None) -> None:
        self.identity = identity
        self.agent_id = agent_id
        self.options = options or UplinkOptions()
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
        self._client: Any = None
        self._handler_set = False
        self._connected = False
        self._epoch = 0
        self._attempts = 0
        self._retry_at = 0.0
        self._refused_sig: tuple[int, int, int, int] | None = None
        self._refused = False
        self._reported = ReportedState()
        self._last_counters = 0.0
        # Loop-thread state.
        self._inflight: dict[str, int] = {}
        self._rejected: set[str] = set()
        self._patched = (0, -1)  # (epoch, version) of the last desired patch applied
        self._last_offer = 0.0
        self._state = "connecting"
        self._state_since = time.time()
        self.counters = {
            "delivered": 0, "messages": 0, "parts": 0, "json_fallback": 0, "send_errors": 0,
            "connects": 0, "disconnects": 0, "reported_patches": 0, "desired_patches": 0,
            "rejected": 0, "confirm_missing": 0, "timeouts": 0,
        }
        self.last_seq: int | None = None
        # close() left an SDK call blocked: the SDK's own (non-daemon) threads would hold
        # the interpreter's exit until it returns, so the caller should end the process.
        self.abandoned = False
        self.last_confirmed: float | None = None
        self._quiet_sdk_loggers()

    # -- the loop's side --------------------------------------------------------------------

    def describe(self) -> str:
        return self.identity.describe()

    def attach(self, agent: AgentHooks) -> None:
        """Start the worker (connect, twin, sends) for this agent."""
        if self._thread is not None:
            raise RuntimeError("the uplink is attached already")
        self._agent = agent
        self._thread = threading.Thread(target=self._run, name="iothub-uplink", daemon=True)
        self._thread.start()

    def pump(self, outbox: Outbox) -> None:
        """Confirm what the worker sent; hand it the next batches. Returns at once."""
        self._outbox = outbox
        self._take_results(outbox)
        now = time.monotonic()
        if (self._agent is not None and self._connected
                and now - self._last_offer >= self.options.report_check_s):
            self._last_offer = now
            self.offer_report(self._agent.reported_document())
        if not self._accepting or len(self._inflight) >= self.options.window:
            return
        config = self._agent.config if self._agent is not None else None
        fmt = config.upload.format.value if config is not None else "msgpack"
        max_bytes = config.upload.max_message_bytes if config is not None else HUB_BODY_LIMIT
        for info in outbox.pending():
            if len(self._inflight) >= self.options.window:
                break
            if info.id in self._inflight or info.id in self._rejected:
                continue
            batch = outbox.read(info.id)
            if batch is None:
                continue  # removed, or set aside as corrupt, since pending()
            self._inflight[info.id] = info.seq
            item = _Item(info.id, info.seq, info.prio, batch.payload, fmt, max_bytes)
            with self._lock:
                if self._accepting:
                    self._queue.append(item)
                    self._lock.notify_all()
                else:
                    self._results.append((info.id, info.seq, _RETURNED))
                    break

    def _take_results(self, outbox: Outbox) -> None:
        while True:
            with self._lock:
                if not self._results:
                    return
                batch_id, seq, outcome = self._results.popleft()
            self._inflight.pop(batch_id, None)
            if outcome == _SENT:
                try:
                    confirmed = outbox.confirm(batch_id)
                except OutboxError as err:
                    # The batch stays and goes out again: a duplicate, never a loss.
                    log.error("iothub: cannot confirm batch %d: %s", seq, err)
                    continue
                if confirmed:
                    self.counters["delivered"] += 1
                else:
                    self.counters["confirm_missing"] += 1  # evicted or expired meanwhile
                self.last_seq = seq
                self.last_confirmed = time.time()
            elif outcome == _REJECTED:
                self._rejected.add(batch_id)
                self.counters["rejected"] += 1

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
        retry = max(0.0, self._retry_at - time.monotonic()) if not self._connected else 0.0
        return {
            "kind": "iothub", "hub": ident.hostname, "gateway": ident.gateway,
            "identity": ident.client_id, "auth": ident.auth, "state": self._state,
            "since": int(self._state_since), "last_seq": self.last_seq,
            "last_confirmed": None if self.last_confirmed is None else int(self.last_confirmed),
            "in_flight": len(self._inflight), "retry_in_s": round(retry, 1),
            **self.counters,
        }

    def close(self) -> None:
        """Wait up to close_grace_s for the batches handed over (confirming those sent), then
        stop the worker and shut the client down (with a deadline)."""
        outbox = self._outbox
        deadline = time.monotonic() + self.options.close_grace_s
        while (self._inflight and self._connected and outbox is not None
               and time.monotonic() < deadline):
            with self._lock:
                if not self._results:
                    self._lock.wait(0.05)
            self._take_results(outbox)
        with self._lock:
            self._accepting = False
            self._stopping.set()
            self._lock.notify_all()
        if self._thread is not None:
            # A worker inside a blocking call is abandoned (a daemon thread): the agent's
            # exit must not wait for a hub that does not answer.
            self._thread.join(min(self.options.call_timeout_s, 5.0))
            self.abandoned = self._thread.is_alive()
        if outbox is not None:
            self._take_results(outbox)
        client, self._client = self._client, None
        if client is not None:
            try:
                call_with_timeout(client.shutdown, 5.0, "shutdown")
            except CallTimeout:
                self.abandoned = True
            except Exception as err:  # noqa: BLE001
                log.debug("iothub: shutdown: %s", err)
        if self.abandoned:
            log.warning("iothub: an SDK call is still blocked; it is abandoned")
        self._set_state("closed")

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
        """The SDK's desired-patch handler (its thread): queue it for the loop, never block."""
        epoch = self._epoch
        self.counters["desired_patches"] += 1
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

    def _quiet_sdk_loggers(self) -> None:
        # The SDK logs every operation at INFO and its pipeline at DEBUG: far too much for a
        # device, and the agent reports the state itself.
        for name in ("azure.iot.device", "paho"):
            logger = logging.getLogger(name)
            if logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)

    def _redact(self, text: str) -> str:
        for secret in self.identity.secrets():
            text = text.replace(secret, "***")
        return _SIG.sub(lambda m: m.group(1) + "***", text)

    def _set_state(self, state: str) -> None:
        state = self._redact(state)
        if state != self._state:
            self._state = state
            self._state_since = time.time()

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
        if self._connected and client is not None and client.connected:
            return True
        if self._connected:
            self._lost("connection lost", discard=False)
        now = time.monotonic()
        if self._refused:
            sig = file_signature(self.identity.source_path)
            if sig == self._refused_sig and now < self._retry_at:
                self._stopping.wait(min(5.0, self._retry_at - now))
                return False
            if sig != self._refused_sig and self._reload_identity is not None:
                try:
                    self.identity = self._reload_identity()
                except IdentityError as err:
                    self._refused_sig = sig
                    self._set_state(f"failed: {err}")
                    return False
                log.info("iothub: the identity changed: %s", self.describe())
                self._discard_client()
            self._refused = False
        elif now < self._retry_at:
            self._stopping.wait(self._retry_at - now)
            return False
        if self._stopping.is_set():
            return False
        self._connect()
        return self._connected

    def _make_client(self) -> Any:
        from azure.iot.device import X509, IoTHubDeviceClient, IoTHubModuleClient

        ident = self.identity
        opts: dict[str, Any] = {
            "keep_alive": self.options.keep_alive_s,
            # Reconnects are the worker's, with backoff; the SDK would retry at a fixed
            # interval, and auto-connect would block a send on a connect.
            "connection_retry": False,
            "auto_connect": False,
        }
        if ident.ca_pem is not None:
            opts["server_verification_cert"] = ident.ca_pem
        if ident.key is not None:
            cls = IoTHubModuleClient if ident.module_id else IoTHubDeviceClient
            client = cls.create_from_connection_string(ident.connection_string(), **opts)
        else:
            assert ident.cert_file is not None and ident.key_file is not None
            x509 = X509(ident.cert_file, ident.key_file)  # type: ignore[no-untyped-call]
            if ident.gateway is not None:
                opts["gateway_hostname"] = ident.gateway
            if ident.module_id:
                client = IoTHubModuleClient.create_from_x509_certificate(
                    x509, hostname=ident.hostname, device_id=ident.device_id,
                    module_id=ident.module_id, **opts)
            else:
                client = IoTHubDeviceClient.create_from_x509_certificate(
                    x509, hostname=ident.hostname, device_id=ident.device_id, **opts)
        client.on_connection_state_change = self._on_connection_change  # type: ignore[assignment]
        return client

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
        self._set_state("connecting")
        self._epoch += 1
        epoch = self._epoch
        try:
            if self._client is None:
                self._client = self._make_client()
                self._handler_set = False
            client = self._client
            call_with_timeout(client.connect, opts.connect_timeout_s, "connect")
            twin = call_with_timeout(client.get_twin, opts.call_timeout_s, "get_twin")
            doc = self._apply_in_loop(twin.get("desired", {}), epoch)
            if self._stopping.is_set():
                return
            if not self._handler_set:
                call_with_timeout(
                    lambda: setattr(client, "on_twin_desired_properties_patch_received", self._on_patch),
                    opts.call_timeout_s, "subscribe")
                self._handler_set = True
                # A patch made between the read and the subscription is not pushed to us:
                # read once more and apply it if the desired version moved.
                again = call_with_timeout(client.get_twin, opts.call_timeout_s, "get_twin")
                if again.get("desired", {}).get("$version") != twin.get("desired", {}).get("$version"):
                    doc = self._apply_in_loop(again.get("desired", {}), epoch) or doc
                twin = again
            self._reported.reset(twin.get("reported") or {})
            if doc is not None:
                self._send_report(doc, force=True)
        except Exception as err:  # noqa: BLE001
            self._connect_failed(err)
            return
        with self._lock:
            self._connected = True
            self._accepting = True
        self._attempts = 0
        self.counters["connects"] += 1
        self._set_state("connected")
        log.info("iothub: connected to %s", self.identity.hostname)
        self._wake_loop()

    def _connect_failed(self, err: Exception) -> None:
        reason, permanent = classify(err)
        reason = self._redact(reason)
        if isinstance(err, CallTimeout):
            self.counters["timeouts"] += 1
            self._discard_client()
        if permanent:
            self._refused = True
            self._refused_sig = file_signature(self.identity.source_path)
            self._retry_at = time.monotonic() + self.options.refused_retry_s
            self._set_state(f"failed: {reason}")
            log.error("iothub: %s: %s; not retrying until the identity changes (or %g s)",
                      self.identity.client_id, reason, self.options.refused_retry_s)
            self._discard_client()
            return
        self._attempts += 1
        delay = backoff_delay(self._attempts, self.options.backoff_min_s,
                              self.options.backoff_max_s, self._rng)
        self._retry_at = time.monotonic() + delay
        if self._attempts <= 3 or self._attempts % 20 == 0:
            log.warning("iothub: cannot connect (attempt %d): %s; retrying in %.1f s",
                        self._attempts, reason, delay)
        self._set_state(f"disconnected: {reason}")

    def _lost(self, reason: str, *, discard: bool) -> None:
        """The connection is gone: return what was queued, schedule a reconnect."""
        with self._lock:
            self._connected = False
            self._accepting = False
            while self._queue:
                item = self._queue.popleft()
                self._results.append((item.batch_id, item.seq, _RETURNED))
        self.counters["disconnects"] += 1
        self._attempts += 1
        delay = backoff_delay(self._attempts, self.options.backoff_min_s,
                              self.options.backoff_max_s, self._rng)
        self._retry_at = time.monotonic() + delay
        reason = self._redact(reason)
        log.warning("iothub: %s; reconnecting in %.1f s", reason, delay)
        self._set_state(f"disconnected: {reason}")
        if discard:
            self._discard_client()
        self._wake_loop()

    def _discard_client(self) -> None:
        client, self._client = self._client, None
        self._handler_set = False
        if client is None:
            return

        def shut() -> None:
            try:
                call_with_timeout(client.shutdown, 10.0, "shutdown")
            except Exception as err:  # noqa: BLE001
                log.debug("iothub: shutting an old client down: %s", err)

        threading.Thread(target=shut, name="iothub-discard", daemon=True).start()

    def _serve(self) -> None:
        """One unit of work while connected: a report, else a batch, else wait a little."""
        with self._lock:
            if self._report_doc is None and not self._queue and not self._stopping.is_set():
                self._lock.wait(0.5)
            doc, self._report_doc = self._report_doc, None
            item = self._queue.popleft() if doc is None and self._queue else None
        client = self._client
        if client is None or not client.connected:
            if item is not None:
                with self._lock:
                    self._queue.appendleft(item)
            if doc is not None:
                self.offer_report(doc)
            return
        if doc is not None:
            try:
                self._send_report(doc)
            except Exception as err:  # noqa: BLE001
                if type(err).__name__ == "ServiceError":
                    log.error("iothub: the hub refused the reported properties: %s", err)
                    return
                self._failed_call(err, None)
            return
        if item is not None:
            self._send(item)

    def _send_report(self, doc: dict[str, Any], *, force: bool = False) -> None:
        patch = self._reported.patch(doc)
        if patch is None:
            return
        now = time.monotonic()
        counters_only = set(patch) <= VOLATILE_REPORTED
        if counters_only and not force and now - self._last_counters < self.options.counters_every_s:
            return  # counters alone wait for their next slot
        client = self._client
        call_with_timeout(lambda: client.patch_twin_reported_properties(patch),
                          self.options.call_timeout_s, "patch_reported")
        self._reported.mark_sent(patch)
        self.counters["reported_patches"] += 1
        if set(patch) & VOLATILE_REPORTED:
            self._last_counters = now

    def _send(self, item: _Item) -> None:
        from azure.iot.device import Message

        try:
            parts = encode_batch(item.payload, item.fmt, item.max_bytes)
        except UnsendableBatch as err:
            log.error("iothub: batch %d cannot be sent (%s): it stays in the outbox until it "
                      "expires, and is counted then", item.seq, err)
            self._result(item, _REJECTED)
            return
        client = self._client
        for part in parts:
            msg_id = f"{self.agent_id}:{item.seq}" + (f":{part.index}" if part.count > 1 else "")
            msg = Message(part.body, message_id=msg_id,  # type: ignore[no-untyped-call]
                          content_encoding=part.content_encoding, content_type=part.content_type)
            props = {"v": str(SCHEMA_VERSION), "seq": str(item.seq), "prio": item.prio,
                     "agent": self.agent_id}
            if part.count > 1:
                props["part"] = str(part.index)
                props["parts"] = str(part.count)
            msg.custom_properties.update(props)
            if part.security:
                msg.set_as_security_message()  # type: ignore[no-untyped-call]
            if item.fmt == "json" and part.content_type != JSON_TYPE:
                self.counters["json_fallback"] += 1
            try:
                call_with_timeout(lambda m=msg: client.send_message(m),  # type: ignore[misc]
                                  self.options.call_timeout_s, "send_message")
            except ValueError as err:  # the SDK's size check: no retry can help
                log.error("iothub: batch %d refused by the SDK: %s", item.seq, err)
                self._result(item, _REJECTED)
                return
            except Exception as err:  # noqa: BLE001
                self._failed_call(err, item)
                return
            self.counters["messages"] += 1
        if len(parts) > 1:
            self.counters["parts"] += len(parts)
        self._result(item, _SENT)

    def _result(self, item: _Item, outcome: str) -> None:
        with self._lock:
            self._results.append((item.batch_id, item.seq, outcome))
        self._wake_loop()

    def _failed_call(self, err: Exception, item: _Item | None) -> None:
        self.counters["send_errors"] += 1
        if item is not None:
            with self._lock:
                self._queue.appendleft(item)  # returned with the rest, in order
        reason, _ = classify(err)
        timed_out = isinstance(err, CallTimeout)
        if timed_out:
            self.counters["timeouts"] += 1
        self._lost(f"send failed: {reason}", discard=timed_out)
