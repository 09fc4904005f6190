"""The uplink's connection state machine, the classification of failed connects and requests
and the counters (agent.uplink.connection), without a hub: the MQTT client's own exception
classes (agent.uplink.mqtt raises them), the socket's and PySocks', and real TLS failures
from real handshakes (in memory, with the stand-in's throwaway certificates). tests/test_uplink_iothub.py checks the same
outcomes against the stand-in (wrong key, wrong CA, a hub that never answers)."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
import socks  # type: ignore[import-untyped]
from hub.broker import Certificates, CertPair

from agent.uplink.connection import (
    COUNTER_NAMES,
    TRANSITIONS,
    Busy,
    CallTimeout,
    ConnectionStateMachine,
    InvalidTransition,
    LinkState,
    Outcome,
    Refused,
    Rejected,
    Unreachable,
    UplinkCounters,
    call_with_timeout,
    classify,
)
from agent.uplink.mqtt import tls_context

# -- the state machine ----------------------------------------------------------------------------


def test_a_new_link_is_connecting_and_reports_it() -> None:
    link = ConnectionStateMachine()
    assert link.state is LinkState.CONNECTING and link.describe() == "connecting"
    assert link.entered() == dict.fromkeys((s.value for s in LinkState), 0)


def test_the_usual_life_connect_lose_reconnect_close() -> None:
    link = ConnectionStateMachine()
    link.to(LinkState.CONNECTED)
    assert link.describe() == "connected"
    link.to(LinkState.DISCONNECTED, "send failed: ConnectionDroppedError")
    assert link.describe() == "disconnected: send failed: ConnectionDroppedError"
    link.to(LinkState.CONNECTING)
    link.to(LinkState.CONNECTED)
    link.to(LinkState.CLOSED)
    assert link.describe() == "closed"
    assert link.entered() == {"connecting": 1, "connected": 2, "disconnected": 1, "failed": 0,
                              "closed": 1}


@pytest.mark.parametrize("old", list(LinkState))
@pytest.mark.parametrize("new", list(LinkState))
def test_every_transition_is_allowed_exactly_when_the_table_says(old: LinkState,
                                                                 new: LinkState) -> None:
    link = ConnectionStateMachine()
    # Walk to `old` along allowed transitions.
    path = {
        LinkState.CONNECTING: [],
        LinkState.CONNECTED: [LinkState.CONNECTED],
        LinkState.DISCONNECTED: [LinkState.DISCONNECTED],
        LinkState.FAILED: [LinkState.FAILED],
        LinkState.CLOSED: [LinkState.CLOSED],
    }[old]
    for step in path:
        link.to(step, "first reason")
    assert link.state is old
    entered = link.entered()[new.value]
    if old is LinkState.CLOSED:
        link.to(new, "later")  # an abandoned worker's late report: closed stays closed
        assert link.state is LinkState.CLOSED and link.entered()[new.value] == entered
    elif new in TRANSITIONS[old]:
        link.to(new, "another reason")
        assert link.state is new and link.entered()[new.value] == entered + 1
    else:
        with pytest.raises(InvalidTransition, match=f"{old.value} -> {new.value}"):
            link.to(new, "another reason")
        assert link.state is old and link.entered()[new.value] == entered


def test_the_same_state_and_reason_is_no_change() -> None:
    link = ConnectionStateMachine()
    link.to(LinkState.DISCONNECTED, "refused")
    since = link.since
    link.to(LinkState.DISCONNECTED, "refused")
    assert link.entered()["disconnected"] == 1 and link.since == since


def test_reasons_are_redacted() -> None:
    link = ConnectionStateMachine(lambda text: text.replace("s3cret", "***"))
    link.to(LinkState.FAILED, "key s3cret refused")
    assert link.describe() == "failed: key *** refused"


# -- classification -------------------------------------------------------------------------------


def chained(outer: BaseException, *causes: BaseException) -> BaseException:
    """`outer` raised from causes[0], raised from causes[1], ..."""
    chain = [outer, *causes]
    for upper, lower in zip(chain, chain[1:]):
        upper.__cause__ = lower
    return outer


@pytest.mark.parametrize("code", [4, 5])
def test_refused_credentials_are_refused(code: int) -> None:
    failure = classify(Refused(f"CONNACK {code}: not authorized"))
    assert failure.outcome is Outcome.REFUSED
    assert failure.reason.startswith("authentication refused by the hub")


@pytest.mark.parametrize("err", [
    Unreachable("CONNACK 3: server unavailable"),
    Unreachable("connection lost"),
    Busy("get_twin: status 429"),
    Busy("patch_reported: status 503"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),  # anything unforeseen
    chained(socks.GeneralProxyError("Socket error"), socks.HTTPError("407 Proxy Authentication Required")),
])
def test_connection_errors_reconnect_with_a_new_client(err: BaseException) -> None:
    failure = classify(err)
    assert failure.outcome is Outcome.RECONNECT and not failure.abandon_client
    assert type(err).__name__ in failure.reason


def test_the_innermost_cause_is_named() -> None:
    err = chained(Unreachable("connection lost"), ConnectionResetError(104, "reset by peer"))
    assert classify(err).reason == (
        "Unreachable: ConnectionResetError: [Errno 104] reset by peer")


def test_a_call_that_never_returned_abandons_the_client() -> None:
    release = threading.Event()
    with pytest.raises(CallTimeout) as caught:
        call_with_timeout(release.wait, 0.05, "connect")
    release.set()
    failure = classify(caught.value)
    assert failure.outcome is Outcome.RECONNECT and failure.abandon_client
    assert failure.reason == "connect did not return within 0.05 s"


def test_call_with_timeout_hands_back_the_result_and_the_exception() -> None:
    assert call_with_timeout(lambda: 42, 5.0, "x") == 42
    with pytest.raises(Rejected, match="400"):
        call_with_timeout(lambda: (_ for _ in ()).throw(Rejected("get_twin", 400)), 5.0, "x")


@pytest.mark.parametrize("err", [Rejected("patch_reported", 400, b'{"message": "too deep"}'),
                                 Rejected("get_twin", 404),
                                 ValueError("Payload too large.")])
def test_a_refused_request_is_rejected_not_a_reconnect(err: BaseException) -> None:
    failure = classify(err)
    assert failure.outcome is Outcome.REJECTED
    assert str(err) in failure.reason


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[BaseException | None,
                                                                          BaseException | None]:
    """A TLS handshake between two contexts over memory BIOs, in this thread: the error each
    side saw (None: its handshake completed)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    errors: dict[str, BaseException | None] = {"c": None, "s": None}
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as err:
                errors[name], done[name] = err, True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    return errors["c"], errors["s"]


def _contexts(certs: Certificates, client_cert: CertPair | None, trusted_ca: Path
              ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    # As the uplink (agent.uplink.mqtt.tls_context) and the gate (client certificates verified).
    client = tls_context(trusted_ca.read_text(),
                         None if client_cert is None else str(client_cert.cert),
                         None if client_cert is None else str(client_cert.key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(certs.server.cert), str(certs.server.key))
    server.load_verify_locations(cafile=str(certs.ca.cert))
    server.verify_mode = ssl.CERT_REQUIRED
    return client, server


def test_an_untrusted_hub_certificate_is_refused(hub_certs: Certificates) -> None:
    client_cert = hub_certs.client("dev-x509")
    client, server = _contexts(hub_certs, client_cert, hub_certs.other_ca().cert)
    seen, _ = _handshake(client, server)
    assert isinstance(seen, ssl.SSLCertVerificationError)
    # paho's connect() raises the ssl error itself.
    failure = classify(seen)
    assert failure.outcome is Outcome.REFUSED
    assert failure.reason.startswith("TLS: the hub's certificate is not trusted (")
    assert "certificate verify failed" in failure.reason


def test_a_client_certificate_the_hub_does_not_trust_is_refused(hub_certs: Certificates) -> None:
    stranger = hub_certs.client("dev-x509", signer=hub_certs.other_ca())
    client, server = _contexts(hub_certs, stranger, hub_certs.ca.cert)
    seen, _ = _handshake(client, server)
    assert isinstance(seen, ssl.SSLError) and seen.reason is not None
    failure = classify(seen)
    assert failure.outcome is Outcome.REFUSED, (seen.reason, failure)
    assert failure.reason.startswith("TLS: the hub refused the client certificate (")


def test_another_tls_failure_is_a_reconnect(hub_certs: Certificates) -> None:
    client, server = _contexts(hub_certs, hub_certs.client("dev-x509"), hub_certs.ca.cert)
    server.minimum_version = ssl.TLSVersion.TLSv1_3  # the client speaks TLS 1.2 only
    seen, _ = _handshake(client, server)
    assert isinstance(seen, ssl.SSLError)
    failure = classify(seen)
    assert failure.outcome is Outcome.RECONNECT, (seen.reason, failure)


# -- counters -------------------------------------------------------------------------------------


def test_counters_from_many_threads_lose_nothing() -> None:
    counters = UplinkCounters()
    start = threading.Barrier(4)

    def bump(name: str) -> None:
        start.wait()
        for _ in range(20000):
            counters.add(name)
            counters.add("messages", 2)

    threads = [threading.Thread(target=bump, args=(name,))
               for name in ("delivered", "desired_patches", "send_errors", "delivered")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = counters.snapshot()
    assert snap["delivered"] == 40000 and snap["desired_patches"] == 20000
    assert snap["send_errors"] == 20000 and snap["messages"] == 160000
    assert set(snap) == set(COUNTER_NAMES) == set(counters)
    with pytest.raises(KeyError):
        counters.add("not_a_counter")
