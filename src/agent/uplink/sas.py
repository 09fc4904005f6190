"""Shared access signature (SAS) tokens, as IoT Hub and DPS check them:

    SharedAccessSignature sr=<quoted resource>&sig=<quoted signature>&se=<expiry>[&skn=<key name>]

signature = base64(HMAC-SHA256(base64decode(key), quote(resource) + "\\n" + expiry)), with
`quote` percent-encoding everything but letters, digits and "_.-~" (the resource's slashes
too). The resource is "<hub>/devices/<device>[/modules/<module>]" for IoT Hub and
"<ID scope>/registrations/<registration id>" for DPS (key name "registration"). A token is a
secret: never log it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import Callable

# A token lives an hour (as the SDK's); the uplink connects again with a new one before
# RENEW_MARGIN_S of it is left (the SDK renews 120 s before the expiry).
DEFAULT_TTL_S = 3600
RENEW_MARGIN_S = 120


def string_to_sign(resource_uri: str, expiry: int) -> str:
    return urllib.parse.quote(resource_uri, safe="") + "\n" + str(expiry)


def sign(key: str, message: str) -> str:
    """base64(HMAC-SHA256(base64decode(key), message)). Raises ValueError for a key that is
    not base64."""
    raw = base64.b64decode(key, validate=True)
    return base64.b64encode(hmac.new(raw, message.encode("utf-8"), hashlib.sha256).digest()).decode()


def token(resource_uri: str, expiry: int, signer: Callable[[str], str],
          key_name: str | None = None) -> str:
    """The token for resource_uri valid until `expiry` (seconds since the epoch); `signer`
    turns the string to sign into the base64 signature (sign() with a key, or the IoT Edge
    workload API)."""
    signature = signer(string_to_sign(resource_uri, expiry))
    text = (f"SharedAccessSignature sr={urllib.parse.quote(resource_uri, safe='')}"
            f"&sig={urllib.parse.quote(signature, safe='')}&se={expiry}")
    return text + (f"&skn={urllib.parse.quote(key_name, safe='')}" if key_name else "")


def key_token(key: str, resource_uri: str, expiry: int, key_name: str | None = None) -> str:
    return token(resource_uri, expiry, lambda message: sign(key, message), key_name)
