"""The Device Provisioning Service (DPS): which IoT Hub the device belongs to, and as whom, asked
of DPS instead of being handed a connection string.

Settings come from the command line, the environment or the local configuration file
(agent.config.local: IothubModule_Dps*), in that order, never from the twin (the twin
arrives from the hub that DPS assigns): an ID scope, a registration id, the global endpoint
(default global.azure-devices-provisioning.net) and one credential:

- a symmetric key file: the device's own key (an individual enrollment);
- a group key file: an enrollment group's key; the device key is derived from it as
  base64(HMAC-SHA256(base64decode(group key), registration id)), as DPS does;
- the X.509 certificate and key files (--x509-cert-file / --x509-key-file): the TLS client
  certificate, whose subject CN is the registration id.

Key files are secrets: they pass agent.uplink.identity.read_secret_file (a regular file that
neither group nor others can access, owned by root or the agent's user) and are never logged.
Everything is checked once, at start (DpsSettings.load raises IdentityError).

The assignment DPS answers (the hub's host name and the device id) is kept in the data
directory, in one file, `dps-assignment.json` (written through agent.durable: fsynced and
renamed):

    {"version": 1, "id_scope": "0ne00000001", "registration_id": "dev1", "auth": "group",
     "endpoint": "global.azure-devices-provisioning.net",
     "assigned_hub": "contoso.azure-devices.net", "device_id": "dev1", "assigned_at": 1764900000}

The next start reuses it without contacting DPS, as long as id_scope, registration_id, auth
and endpoint are still those of the settings (otherwise it is ignored and DPS is asked again).
When the assigned hub refuses the identity (the device was moved to another hub, or its
enrollment changed), the uplink provisions again (agent.uplink.iothub), with its backoff.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.clock import wall_time
from agent.durable import replace_file
from agent.record import field, record, replace
from agent.uplink.identity import (
    ENV_CA_FILE,
    ENV_CERT_FILE,
    ENV_KEY_FILE,
    HubIdentity,
    IdentityError,
    check_x509,
    load_ca,
    read_secret_file,
)

log = logging.getLogger("agent.uplink")

DEFAULT_GLOBAL_ENDPOINT = "global.azure-devices-provisioning.net"
ASSIGNMENT_FILE = "dps-assignment.json"
ASSIGNMENT_VERSION = 1

ENV_ID_SCOPE = "IOTHUB_DPS_ID_SCOPE"
ENV_REGISTRATION_ID = "IOTHUB_DPS_REGISTRATION_ID"
ENV_ENDPOINT = "IOTHUB_DPS_ENDPOINT"
ENV_SYMMETRIC_KEY_FILE = "IOTHUB_DPS_SYMMETRIC_KEY_FILE"
ENV_GROUP_KEY_FILE = "IOTHUB_DPS_GROUP_KEY_FILE"

AUTH_SYMMETRIC = "symmetric"  # an individual enrollment's key
AUTH_GROUP = "group"  # an enrollment group's key, the device key derived from it
AUTH_X509 = "x509"

# DPS: an ID scope is "0ne" and hex digits; a registration id is up to 128 lower-case
# letters, digits and -._: (a device id is then made from it).
_ID_SCOPE = re.compile(r"^[A-Za-z0-9]{1,64}$")
_REGISTRATION_ID = re.compile(r"^[a-z0-9\-._:]{1,128}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The device key of a group enrollment: base64(HMAC-SHA256(base64decode(group key),
    registration id)). Secret."""
    # hashlib loads OpenSSL's libcrypto (about 4 MB of RSS): only a group enrollment needs it,
    # never the local default, which imports this module for DpsSettings.load.
    import base64
    import hashlib
    import hmac

    raw = base64.b64decode(group_key, validate=True)
    digest = hmac.new(raw, registration_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _read_key(path: str, what: str) -> str:
    import base64  # only a DPS key file needs it (about 0.3 MB of RSS)

    data = read_secret_file(path, what)
    try:
        key = data.decode("ascii").strip()
        raw = base64.b64decode(key, validate=True)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise IdentityError(f"{what} {path} does not hold a base64 key")
    return key


@record(frozen=True)
class DpsSettings:
    """What the agent gives DPS. `device_key` is the key it signs with (derived for a group
    enrollment); secret: left out of repr."""

    id_scope: str
    registration_id: str
    endpoint: str
    auth: str
    device_key: str | None = field(default=None, repr=False)
    key_source: str | None = None  # the key file (symmetric or group)
    cert_file: str | None = None
    key_file: str | None = None
    ca_pem: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @classmethod
    def load(cls, id_scope: str | None = None, registration_id: str | None = None,
             endpoint: str | None = None, symmetric_key_file: str | None = None,
             group_key_file: str | None = None, cert_file: str | None = None,
             key_file: str | None = None, ca_file: str | None = None, *,
             environ: Mapping[str, str] | None = None,
             local: Mapping[str, str] | None = None) -> DpsSettings | None:
        """The settings from the command line's values, else the environment's, else the
        local configuration file's (`local`: agent.config.local.load_dps_files); None when no
        ID scope is configured (no DPS). Raises IdentityError when DPS is configured but
        cannot be used."""
        env = os.environ if environ is None else environ
        file = local or {}
        id_scope = id_scope or env.get(ENV_ID_SCOPE) or file.get("id_scope")
        if id_scope is None:
            return None
        registration_id = (registration_id or env.get(ENV_REGISTRATION_ID)
                           or file.get("registration_id"))
        endpoint = (endpoint or env.get(ENV_ENDPOINT) or file.get("endpoint")
                    or DEFAULT_GLOBAL_ENDPOINT)
        symmetric_key_file = (symmetric_key_file or env.get(ENV_SYMMETRIC_KEY_FILE)
                              or file.get("symmetric_key_file"))
        group_key_file = group_key_file or env.get(ENV_GROUP_KEY_FILE) or file.get("group_key_file")
        cert_file = cert_file or env.get(ENV_CERT_FILE) or file.get("cert_file")
        key_file = key_file or env.get(ENV_KEY_FILE) or file.get("key_file")
        ca_file = ca_file or env.get(ENV_CA_FILE) or file.get("ca_file")
        if not _ID_SCOPE.match(id_scope):
            raise IdentityError(f"DPS ID scope {id_scope[:80]!r} is not an ID scope (0ne...)")
        if registration_id is None:
            raise IdentityError(f"DPS needs a registration id (--dps-registration-id, "
                                f"${ENV_REGISTRATION_ID} or IothubModule_DpsRegistrationId)")
        if not _REGISTRATION_ID.match(registration_id):
            raise IdentityError(f"DPS registration id {registration_id[:80]!r}: 1..128 lower-case "
                                "letters, digits and -._:")
        if not _HOST.match(endpoint):
            raise IdentityError(f"DPS endpoint {endpoint[:80]!r} is not a host name")
        given = [name for name, value in (("a symmetric key file", symmetric_key_file),
                                          ("a group key file", group_key_file),
                                          ("X.509 files", cert_file or key_file)) if value]
        if len(given) != 1:
            raise IdentityError(
                "DPS needs exactly one credential: --dps-symmetric-key-file, "
                "--dps-group-key-file or --x509-cert-file with --x509-key-file"
                + (f" (got {' and '.join(given)})" if given else ""))
        base = cls(id_scope=id_scope, registration_id=registration_id, endpoint=endpoint,
                   auth=AUTH_X509, ca_pem=load_ca(ca_file) if ca_file else None, ca_file=ca_file)
        if symmetric_key_file:
            return replace(base, auth=AUTH_SYMMETRIC, key_source=symmetric_key_file,
                           device_key=_read_key(symmetric_key_file, "DPS symmetric key file"))
        if group_key_file:
            group_key = _read_key(group_key_file, "DPS group key file")
            return replace(base, auth=AUTH_GROUP, key_source=group_key_file,
                           device_key=derive_device_key(group_key, registration_id))
        if not cert_file or not key_file:
            raise IdentityError("DPS with X.509 needs both --x509-cert-file and --x509-key-file")
        check_x509(cert_file, key_file)
        return replace(base, cert_file=cert_file, key_file=key_file)

    def describe(self) -> str:
        what = {AUTH_SYMMETRIC: f"symmetric key from {self.key_source}",
                AUTH_GROUP: f"group enrollment key from {self.key_source}",
                AUTH_X509: f"X.509 certificate {self.cert_file}"}[self.auth]
        return (f"DPS {self.endpoint}, ID scope {self.id_scope}, registration "
                f"{self.registration_id} ({what})")

    def secrets(self) -> list[str]:
        return [self.device_key] if self.device_key else []


@record(frozen=True)
class Assignment:
    """What DPS answered: the hub and the device id there."""

    assigned_hub: str
    device_id: str
    assigned_at: int


class ProvisioningError(Exception):
    """DPS answered, but not with an assignment; the message says what it answered."""


class Provisioner:
    """Asks DPS for the device's hub (provision()) and keeps the answer in
    DATA/dps-assignment.json (stored()). Blocking: the uplink's worker calls it."""

    def __init__(self, settings: DpsSettings, data_dir: Path) -> None:
        self.settings = settings
        self.path = data_dir / ASSIGNMENT_FILE
        self.registrations = 0  # answered by DPS, since start
        self.last: Assignment | None = None

    def describe(self) -> str:
        return self.settings.describe()

    def secrets(self) -> list[str]:
        return self.settings.secrets()

    def identity(self, assignment: Assignment) -> HubIdentity:
        s = self.settings
        return HubIdentity(
            hostname=assignment.assigned_hub, device_id=assignment.device_id, module_id=None,
            gateway=None, key=s.device_key, cert_file=s.cert_file, key_file=s.key_file,
            ca_pem=s.ca_pem, ca_file=s.ca_file,
            source=f"DPS {s.id_scope}/{s.registration_id} ({s.auth})", source_path=None)

    def stored(self) -> Assignment | None:
        """The stored assignment when it belongs to these settings, else None (absent,
        unreadable or for other settings: DPS is asked again)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("dps: cannot read %s: %s; provisioning again", self.path, err.strerror)
            return None
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != ASSIGNMENT_VERSION:
                raise ValueError("not a version 1 assignment")
            s = self.settings
            mine = (s.id_scope, s.registration_id, s.auth, s.endpoint)
            if (doc["id_scope"], doc["registration_id"], doc["auth"], doc["endpoint"]) != mine:
                log.info("dps: %s is for other settings; provisioning again", self.path)
                return None
            assignment = _checked(str(doc["assigned_hub"]), str(doc["device_id"]),
                                  int(doc["assigned_at"]))
        except (ValueError, KeyError, TypeError, ProvisioningError) as err:
            log.warning("dps: %s is not usable (%s); provisioning again", self.path, err)
            return None
        self.last = assignment
        return assignment

    def forget(self) -> None:
        """The stored assignment is no longer good (the hub refused it)."""
        self.last = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def provision(self, timeout: float = 60.0) -> Assignment:
        """Register with DPS over MQTT (agent.uplink.mqtt.register), within `timeout`
        seconds; store the assignment and return it. Raises the client's errors
        (connection.classify reads them) or ProvisioningError."""
        from agent.uplink.mqtt import register

        s = self.settings
        answer = register(s.endpoint, s.id_scope, s.registration_id, key=s.device_key,
                          cert_file=s.cert_file, key_file=s.key_file, ca_pem=s.ca_pem,
                          timeout=timeout)
        status = answer.get("status")
        state = answer.get("registrationState")
        if status != "assigned" or not isinstance(state, dict):
            raise ProvisioningError(f"DPS answered status {status!r}, not an assignment")
        assignment = _checked(str(state.get("assignedHub")), str(state.get("deviceId")),
                              int(wall_time()))
        self.registrations += 1
        doc = {"version": ASSIGNMENT_VERSION, "id_scope": s.id_scope,
               "registration_id": s.registration_id, "auth": s.auth, "endpoint": s.endpoint,
               "assigned_hub": assignment.assigned_hub, "device_id": assignment.device_id,
               "assigned_at": assignment.assigned_at}
        try:
            replace_file(self.path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
        except OSError as err:
            # The assignment is good for this run; the next start asks DPS again.
            log.error("dps: cannot store the assignment in %s: %s", self.path, err.strerror)
        self.last = assignment
        return assignment

    def status(self) -> dict[str, Any]:
        last = self.last
        return {"id_scope": self.settings.id_scope,
                "registration_id": self.settings.registration_id,
                "endpoint": self.settings.endpoint, "auth": self.settings.auth,
                "registrations": self.registrations,
                "assigned_hub": None if last is None else last.assigned_hub,
                "assigned_at": None if last is None else last.assigned_at}


def _checked(hub: str, device_id: str, assigned_at: int) -> Assignment:
    if not _HOST.match(hub):
        raise ProvisioningError(f"assigned hub {hub[:80]!r} is not a host name")
    if not _DEVICE_ID.match(device_id):
        raise ProvisioningError(f"assigned device id {device_id[:80]!r} is not an IoT Hub id")
    return Assignment(hub, device_id, assigned_at)
