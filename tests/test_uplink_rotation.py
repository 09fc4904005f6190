"""Identity rotation without a restart (agent.uplink.iothub, docs/uplink.md "Rotation"): the
X.509 certificate and key, or the connection-string file, replaced on disk while connected.
A usable renewal reconnects under the new identity; an unusable one (bad PEM, a key that does
not match, an expired certificate) keeps the working connection and says why. Against the
stand-in (tests/hub/), whose gate records the serial of every accepted client certificate.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hub.broker import Certificates, CertPair
from hub.hub import Hub
from test_uplink_iothub import FAST, HubAgent, hub_identity, seqs_of

from agent.record import replace
from agent.uplink.identity import (
    HubIdentity,
    IdentityError,
    certificate_validity,
    check_renewed,
    load_identity,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

DEVICE = "dev-rotate"
# Checks the files every 0.2 s here (10 s by default).
ROTATING = replace(FAST, identity_check_s=0.2)



def certs_of(iothub: Any) -> list[tuple[str, str]]:
    """The accepted X.509 connections of this test's device (the stand-in is shared with the
    tests before it, whose devices connect with certificates too)."""
    return [c for c in iothub.gate.client_certs() if c[0] == DEVICE]

def serial(cert: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-serial"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().partition("=")[2]


def install(pair: CertPair, cert: Path, key: Path) -> None:
    """Replace the files the way a renewal tool does: write aside, rename over."""
    for source, target, mode in ((pair.cert, cert, 0o644), (pair.key, key, 0o600)):
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        staged.chmod(mode)
        os.replace(staged, target)


def test_certificate_dates_and_the_renewal_check(hub_certs: Certificates) -> None:
    good = hub_certs.renew("dates")
    not_before, not_after = certificate_validity(str(good.cert))
    assert not_before <= time.time() < not_after
    assert 1.5 * 86400 < not_after - not_before <= 2 * 86400 + 60  # CERT_DAYS = 2
    expired = hub_certs.renew("dates", days=-1)
    ident = HubIdentity("h", "d", None, None, cert_file=str(expired.cert), key_file=str(expired.key))
    with pytest.raises(IdentityError, match="expired at"):
        check_renewed(ident, time.time())
    valid = HubIdentity("h", "d", None, None, cert_file=str(good.cert), key_file=str(good.key))
    check_renewed(valid, time.time())
    with pytest.raises(IdentityError, match="is not valid before"):
        check_renewed(valid, not_before - 3600)
    with pytest.raises(IdentityError, match="not a certificate|holds no PEM"):
        certificate_validity(str(good.key))


class X509Device:
    """An X.509 identity at the stand-in with its certificate and key in files of its own."""

    def __init__(self, hub: Hub, certs: Certificates, tmp_path: Path) -> None:
        registered = hub.x509_identity(DEVICE)
        assert registered.x509 is not None
        self.cert = tmp_path / "device.pem"
        self.key = tmp_path / "device.key"
        install(registered.x509, self.cert, self.key)
        cs = f"HostName={hub.hostname};DeviceId={DEVICE};x509=true;GatewayHostName={hub.gateway}"
        self.certs = certs

        def load() -> HubIdentity:
            return hub_identity(cs, certs, cert_file=str(self.cert), key_file=str(self.key))

        self.load = load


@pytest.fixture
def agents() -> Any:
    made: list[HubAgent] = []
    yield made
    for a in made:
        a.close()


@pytest.mark.timeout(120)
def test_x509_rotation_reconnects_under_the_new_certificate_and_refuses_bad_ones(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    device = X509Device(iothub, hub_certs, tmp_path)
    first_serial = serial(device.cert)
    a = HubAgent(tmp_path / "data", device.load(), options=ROTATING,
                 uplink_kwargs={"reload_identity": device.load})
    agents.append(a)
    a.connected()
    stored = [a.put("Low", [{"t": "test", "n": 0}])]
    a.telemetry(iothub, 1)
    assert certs_of(iothub) == [(DEVICE, first_serial)]

    # A valid renewal: new key, new serial; the agent reconnects with it.
    renewed = hub_certs.renew(DEVICE)
    install(renewed, device.cert, device.key)
    a.until(lambda: len(certs_of(iothub)) == 2 and a.state() == "connected", 15,
            "reconnected with the renewed certificate")
    assert certs_of(iothub)[-1] == (DEVICE, serial(renewed.cert))
    assert a.uplink.status()["identity_change"]["state"] == "applied"
    stored.append(a.put("Low", [{"t": "test", "n": 1}]))
    assert seqs_of(a.telemetry(iothub, 2)) == stored

    # Unusable renewals keep the working connection and report why.
    other = hub_certs.renew(DEVICE)
    expired = hub_certs.renew(DEVICE, days=-1)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "c.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                                   "-----END CERTIFICATE-----\n")
    shutil.copyfile(renewed.key, garbage / "c.key")
    bad = [
        (CertPair(garbage / "c.pem", garbage / "c.key"), "do not load together"),  # bad PEM
        (CertPair(other.cert, renewed.key), "do not load together"),  # the key does not match
        (expired, "expired at"),
    ]
    for n, (pair, why) in enumerate(bad, start=2):
        seen = a.uplink.status()["identity_change"]["count"]

        def refused(why: str = why, seen: int = seen) -> bool:
            change = a.uplink.status()["identity_change"]
            return bool(change["count"] > seen and change["state"] == "refused"
                        and why in change["reason"])

        install(pair, device.cert, device.key)
        a.until(refused, 15, f"refused: {why}")
        assert a.state() == "connected"
        stored.append(a.put("Low", [{"t": "test", "n": n}]))
        assert seqs_of(a.telemetry(iothub, n + 1)) == stored  # on the old connection
        assert len(certs_of(iothub)) == 2
    assert any("the new identity is not used" in r.getMessage() and "expired at" in r.getMessage()
               for r in caplog.records)

    # A good one again: applied.
    install(other, device.cert, device.key)
    a.until(lambda: len(certs_of(iothub)) == 3 and a.state() == "connected", 15,
            "reconnected with the second renewal")
    assert certs_of(iothub)[-1] == (DEVICE, serial(other.cert))
    stored.append(a.put("Low", [{"t": "test", "n": 9}]))
    assert seqs_of(a.telemetry(iothub, len(stored))) == stored


@pytest.mark.timeout(120)
def test_connection_string_rotation_while_connected_and_the_old_key_never_logged(
    iothub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    old = iothub.identity("dev-rotate-sas", "iot-micro-agent")
    cs_file = tmp_path / "connection_string"
    cs_file.write_text(old.connection_string() + "\n")
    cs_file.chmod(0o600)

    def load() -> HubIdentity:
        ident, _ = load_identity(str(cs_file), str(hub_certs.ca.cert), environ={})
        assert ident is not None
        return ident

    a = HubAgent(tmp_path / "data", load(), options=ROTATING, uplink_kwargs={"reload_identity": load})
    agents.append(a)
    a.connected()
    stored = [a.put("Low", [{"t": "test", "n": 0}])]
    a.telemetry(iothub, 1)
    # The hub gets a new key (the old one is refused from now on), the file follows.
    new_key = "bmV3LWtleS1vZi10aGUtZGV2aWNlLWFmdGVyLXJvdGF0aW9u"
    new = iothub.identity("dev-rotate-sas", "iot-micro-agent", key=new_key)
    staged = tmp_path / "connection_string.new"
    staged.write_text(new.connection_string() + "\n")
    staged.chmod(0o600)
    os.replace(staged, cs_file)
    decisions = len(iothub.gate.decisions())
    a.until(lambda: len(iothub.gate.decisions()) > decisions and a.state() == "connected", 15,
            "reconnected with the new key")
    assert iothub.gate.decisions()[-1][1:] == (True, "SAS token valid")
    assert a.uplink.identity.key == new_key
    stored.append(a.put("Low", [{"t": "test", "n": 1}]))
    assert seqs_of(a.telemetry(iothub, 2)) == stored
    # A rewrite that does not parse keeps the connection.
    cs_file.write_text("HostName=only-a-host\n")
    a.until(lambda: (a.uplink.status()["identity_change"] or {}).get("state") == "refused", 15,
            "the broken file refused")
    assert a.state() == "connected"
    assert "lacks DeviceId" in a.uplink.status()["identity_change"]["reason"]
    assert old.key is not None and old.key not in caplog.text and new_key not in caplog.text
