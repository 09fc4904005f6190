"""The pure parts of the agent's own IoT Hub MQTT (agent.uplink.mqtt, agent.uplink.sas), without
a hub: SAS tokens against openssl's HMAC and the stand-in's own check, user names, telemetry
topics and their property bags as the stand-in decodes them, the answers of the twin and of
DPS, and what a status means. The live paths (connect, twin, telemetry, WebSockets, proxy,
Edge, DPS) run end to end against the stand-in in tests/test_uplink_*.py."""

from __future__ import annotations

import base64
import subprocess
import urllib.parse

import pytest
from hub.gate import check_sas
from hub.hub import _TELEMETRY, parse_property_bag

from agent.uplink import sas
from agent.uplink.connection import Busy, Outcome, Rejected, classify
from agent.uplink.mqtt import (
    DPS_RESPONSES,
    SECURITY_INTERFACE_ID,
    TWIN_RESPONSES,
    check_status,
    dps_username,
    hub_username,
    parse_response,
    property_bag,
    telemetry_prefix,
)

KEY = base64.b64encode(bytes(range(32))).decode()


def openssl_hmac(key: str, message: str) -> str:
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt",
         f"hexkey:{base64.b64decode(key).hex()}", "-binary"],
        input=message.encode(), capture_output=True, check=True).stdout
    return base64.b64encode(out).decode()


@pytest.mark.parametrize("resource", ["myhub.azure-devices.net/devices/dev1",
                                      "myhub.azure-devices.net/devices/dev1/modules/m:1",
                                      "0ne00000001/registrations/sensor.42"])
def test_sas_token_form_and_signature(resource: str) -> None:
    expiry = 1764900000
    token = sas.key_token(KEY, resource, expiry)
    # The documented form: the resource and the signature url-encoded, slashes too.
    message = urllib.parse.quote(resource, safe="") + "\n" + str(expiry)
    assert sas.string_to_sign(resource, expiry) == message
    signature = openssl_hmac(KEY, message)
    assert token == (f"SharedAccessSignature sr={urllib.parse.quote(resource, safe='')}"
                     f"&sig={urllib.parse.quote(signature, safe='')}&se={expiry}")
    # The stand-in's gate checks tokens with its own code: it accepts this one.
    assert check_sas(token, resource, KEY, now=expiry - 10) is None
    assert check_sas(token, resource, KEY, now=expiry + 1) is not None  # expired
    other = base64.b64encode(bytes(32)).decode()
    assert check_sas(token, resource, other, now=expiry - 10) is not None


def test_a_dps_token_names_its_key() -> None:
    token = sas.key_token(KEY, "0ne00000001/registrations/r1", 100, "registration")
    assert token.endswith("&se=100&skn=registration")


def test_a_key_that_is_not_base64_is_refused() -> None:
    with pytest.raises(ValueError):
        sas.key_token("not base64!", "h/devices/d", 100)


def test_user_names() -> None:
    device = hub_username("h.azure-devices.net", "dev1", None)
    module = hub_username("h.azure-devices.net", "dev1", "mod 1")
    assert device.startswith("h.azure-devices.net/dev1/?api-version=2019-10-01&DeviceClientType=")
    # The client id is not encoded (IoT Hub compares it as is); the query is.
    assert module.startswith("h.azure-devices.net/dev1/mod 1/?api-version=2019-10-01&")
    assert "iot-micro-agent%2F" in module
    assert dps_username("0ne1", "r1").startswith("0ne1/registrations/r1/api-version=2019-03-31&")


def test_telemetry_topics_decode_as_the_hub_reads_them() -> None:
    custom = {"v": "1", "seq": "42", "prio": "High", "agent": "a b&c=d", "part": "1", "parts": "2"}
    for device, module in (("dev1", None), ("dev/1", "mod%1")):
        topic = telemetry_prefix(device, module) + property_bag(
            "a b&c=d:42:1", "application/json", "utf-8", True, custom)
        match = _TELEMETRY.match(topic)
        assert match is not None
        assert urllib.parse.unquote(match.group(1)) == device
        assert (None if match.group(2) is None else urllib.parse.unquote(match.group(2))) == module
        props = parse_property_bag(match.group(3))
        assert props == {"$.mid": "a b&c=d:42:1", "$.ct": "application/json", "$.ce": "utf-8",
                         "$.ifid": SECURITY_INTERFACE_ID, **custom}
        # System properties first, in IoT Hub's order; then the custom ones by name.
        assert list(props)[:4] == ["$.mid", "$.ct", "$.ce", "$.ifid"]
        assert list(props)[4:] == sorted(custom)


def test_a_message_without_system_properties_has_only_the_custom_ones() -> None:
    assert property_bag(None, None, None, False, {"b": "2", "a": "1"}) == "a=1&b=2"


def test_twin_and_dps_answers() -> None:
    got = parse_response("$iothub/twin/res/200/?$rid=7", TWIN_RESPONSES, b'{"desired": {}}')
    assert got is not None and got.status == 200 and got.params == {"$rid": "7"}
    assert got.json() == {"desired": {}}
    patched = parse_response("$iothub/twin/res/204/?$rid=8&$version=12", TWIN_RESPONSES, b"")
    assert patched is not None and patched.params == {"$rid": "8", "$version": "12"}
    assert patched.json() == {}
    dps = parse_response("$dps/registrations/res/202/?$rid=1&retry-after=3", DPS_RESPONSES,
                         b'{"operationId": "o", "status": "assigning"}')
    assert dps is not None and dps.status == 202 and dps.params["retry-after"] == "3"
    # Not answers: a desired patch, another prefix, no status.
    assert parse_response("$iothub/twin/PATCH/properties/desired/?$version=3",
                          TWIN_RESPONSES, b"{}") is None
    assert parse_response("$iothub/twin/res/200/?$rid=1", DPS_RESPONSES, b"") is None
    assert parse_response("$iothub/twin/res/x/?$rid=1", TWIN_RESPONSES, b"") is None


@pytest.mark.parametrize(("status", "outcome"), [
    (400, Outcome.REJECTED), (404, Outcome.REJECTED), (413, Outcome.REJECTED),
    (429, Outcome.RECONNECT), (500, Outcome.RECONNECT), (503, Outcome.RECONNECT),
])
def test_a_status_means_rejected_or_reconnect(status: int, outcome: Outcome) -> None:
    answer = parse_response(f"$iothub/twin/res/{status}/?$rid=1", TWIN_RESPONSES, b'{"m": 1}')
    assert answer is not None
    with pytest.raises((Rejected, Busy)) as caught:
        check_status("patch_reported", answer)
    failure = classify(caught.value)
    assert failure.outcome is outcome and f"status {status}" in failure.reason
    ok = parse_response("$iothub/twin/res/204/?$rid=1", TWIN_RESPONSES, b"")
    assert ok is not None and check_status("patch_reported", ok) is ok
