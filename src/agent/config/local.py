"""Local-only settings: how the uplink reaches the hub (MQTT over TCP 8883, or MQTT over
WebSockets on 443, optionally through an HTTP CONNECT proxy). They decide whether the agent can
reach its hub at all, so a twin (which arrives through that very connection) must never change
them: they come from the local configuration file and the command line only, and a twin that
carries one has it listed in `latest_invalid_fields` with LOCAL_ONLY_REASON (agent.config.store).
The names and values are those of Defender for IoT's micro agent:

    "IothubModule_TransportProtocol": "MQTT" | "MQTT_WebSocket_Protocol"
    "IothubModule_ProxyConfig": "<host>,<port>[,<user>,<password>]"

and the provisioning settings of DPS (agent.uplink.provisioning), which name the identity the
agent asks DPS for: `IothubModule_Dps*` (DPS_SETTINGS). They hold file names, never a key; the
key files pass the connection string's checks when DpsSettings.load reads them.

Read once, at start (`load_transport`, `load_dps_files`); a problem raises LocalSettingError with a message that
never contains the proxy password, and `micro-agent run` exits with code 2. A proxy password is
a secret: in the configuration file only when that file passes the connection string's checks
(a regular file that neither group nor others can access, owned by root or the agent's user),
else from `--proxy-password-file` (the same checks).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from pathlib import Path

from agent.record import field, record

TRANSPORT_PROTOCOL = "IothubModule_TransportProtocol"
PROXY_CONFIG = "IothubModule_ProxyConfig"

# name -> meaning (docs/configuration.md lists them).
LOCAL_ONLY: Mapping[str, str] = {
    TRANSPORT_PROTOCOL: "MQTT (TCP 8883, the default) or MQTT_WebSocket_Protocol (WebSockets "
                        "over TLS on 443). AMQP values are refused: the agent speaks MQTT only.",
    PROXY_CONFIG: "An HTTP CONNECT proxy: \"<host>,<port>[,<user>,<password>]\"; \"\" for none.",
    "IothubModule_DpsIdScope": "DPS: the ID scope (0ne...); turns provisioning through DPS on.",
    "IothubModule_DpsRegistrationId": "DPS: the registration id.",
    "IothubModule_DpsEndpoint": "DPS: the global endpoint (global.azure-devices-provisioning.net).",
    "IothubModule_DpsSymmetricKeyFile": "DPS: the file of an individual enrollment's key.",
    "IothubModule_DpsGroupKeyFile": "DPS: the file of an enrollment group's key.",
    "IothubModule_DpsCertificateFile": "DPS: the X.509 device certificate file (PEM).",
    "IothubModule_DpsCertificateKeyFile": "DPS: the X.509 certificate's private key file (PEM).",
    "IothubModule_DpsCaFile": "DPS: the trusted CA file (PEM) for DPS and the assigned hub.",
}
# name in the file -> DpsSettings.load's argument. The command line wins, then the environment
# ($IOTHUB_DPS_*, $IOTHUB_X509_*, $IOTHUB_CA_FILE), then the file.
DPS_SETTINGS: Mapping[str, str] = {
    "IothubModule_DpsIdScope": "id_scope",
    "IothubModule_DpsRegistrationId": "registration_id",
    "IothubModule_DpsEndpoint": "endpoint",
    "IothubModule_DpsSymmetricKeyFile": "symmetric_key_file",
    "IothubModule_DpsGroupKeyFile": "group_key_file",
    "IothubModule_DpsCertificateFile": "cert_file",
    "IothubModule_DpsCertificateKeyFile": "key_file",
    "IothubModule_DpsCaFile": "ca_file",
}
LOCAL_ONLY_REASON = ("local only: set it in the local configuration file or on the command line; "
                     "the twin cannot change how the agent reaches its hub")

MAX_FILE_BYTES = 1 << 20  # as agent.config.store
MAX_PROXY_CHARS = 1024
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


class LocalSettingError(Exception):
    """A local setting cannot be used; the message says why and holds no password."""


class TransportProtocol(enum.Enum):
    MQTT = "MQTT"
    MQTT_WEBSOCKET = "MQTT_WebSocket_Protocol"


@record(frozen=True)
class ProxySettings:
    """An HTTP CONNECT proxy (through which paho opens the MQTT connection). The password is kept
    out of repr and describe()."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        user = f" as {self.username}" if self.username else ""
        return f"HTTP proxy {self.host}:{self.port}{user}"


@record(frozen=True)
class UplinkTransport:
    """How the uplink connects: the protocol, and the proxy, if any."""

    protocol: TransportProtocol = TransportProtocol.MQTT
    proxy: ProxySettings | None = None

    @property
    def websockets(self) -> bool:
        return self.protocol is TransportProtocol.MQTT_WEBSOCKET

    @property
    def port(self) -> int:
        # IoT Hub's ports, not configurable there: 443 for WebSockets, 8883 for TCP.
        return 443 if self.websockets else 8883

    def describe(self) -> str:
        how = "MQTT over WebSockets (443)" if self.websockets else "MQTT (8883)"
        return how + (f" through {self.proxy.describe()}" if self.proxy else "")

    def secrets(self) -> list[str]:
        return [self.proxy.password] if self.proxy and self.proxy.password else []


def parse_transport_protocol(value: object, source: str) -> TransportProtocol:
    if not isinstance(value, str):
        raise LocalSettingError(f"{source}: {TRANSPORT_PROTOCOL} must be a string")
    text = value.strip()
    if text.upper().startswith("AMQP"):
        raise LocalSettingError(
            f"{source}: {TRANSPORT_PROTOCOL} {text[:40]!r} is refused: the agent speaks "
            "IoT Hub's MQTT only (no AMQP); use MQTT or MQTT_WebSocket_Protocol "
            "(WebSockets on port 443)")
    for member in TransportProtocol:
        if text.lower() == member.value.lower():
            return member
    raise LocalSettingError(f"{source}: {TRANSPORT_PROTOCOL} {text[:40]!r} is not MQTT or "
                            "MQTT_WebSocket_Protocol")


def parse_proxy_config(value: object, source: str) -> ProxySettings | None:
    """"<host>,<port>[,<user>,<password>]" (or "<host>,<port>,<user>" with the password given
    apart); "" is no proxy. Errors never quote the password."""
    if not isinstance(value, str):
        raise LocalSettingError(f"{source}: {PROXY_CONFIG} must be a string")
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_PROXY_CHARS:
        raise LocalSettingError(f"{source}: {PROXY_CONFIG} is longer than {MAX_PROXY_CHARS} "
                                "characters")
    # The password is the last item and may itself hold commas.
    parts = text.split(",", 3)
    if len(parts) < 2:
        raise LocalSettingError(f"{source}: {PROXY_CONFIG} must be \"<host>,<port>[,<user>,"
                                "<password>]\"")
    host, port_text = parts[0].strip(), parts[1].strip()
    if not _HOST.match(host):
        raise LocalSettingError(f"{source}: {PROXY_CONFIG}: {host[:80]!r} is not a host name "
                                "or address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise LocalSettingError(f"{source}: {PROXY_CONFIG}: port {port_text[:10]!r} is not "
                                "1..65535")
    username = parts[2].strip() if len(parts) > 2 else ""
    password = parts[3] if len(parts) > 3 else ""
    if password and not username:
        raise LocalSettingError(f"{source}: {PROXY_CONFIG} has a password but no user")
    if any(ch in username for ch in ":\r\n"):
        raise LocalSettingError(f"{source}: {PROXY_CONFIG}: the user cannot contain ':' or "
                                "line breaks (HTTP Basic authentication)")
    if any(ch in password for ch in "\r\n"):
        raise LocalSettingError(f"{source}: {PROXY_CONFIG}: the password cannot contain line "
                                "breaks")
    return ProxySettings(host, int(port_text), username or None, password or None)


def read_local_settings(path: str | Path | None) -> dict[str, object]:
    """The local-only names of the configuration file, raw. A missing or unreadable file has
    none (ConfigStore reports what is wrong with it)."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as source:
            data = source.read(MAX_FILE_BYTES + 1)
        doc = json.loads(data) if len(data) <= MAX_FILE_BYTES else None
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {name: doc[name] for name in LOCAL_ONLY if name in doc}


def load_transport(config_path: str | Path | None, *, protocol: str | None = None,
                   proxy: str | None = None, proxy_password_file: str | None = None
                   ) -> UplinkTransport:
    """The transport from the command line's values (protocol, proxy, proxy_password_file:
    None when not given), else the configuration file's. Raises LocalSettingError."""
    from agent.uplink.identity import IdentityError, read_secret_file

    settings = read_local_settings(config_path)
    if protocol is not None:
        chosen = parse_transport_protocol(protocol, "--transport-protocol")
    elif TRANSPORT_PROTOCOL in settings:
        chosen = parse_transport_protocol(settings[TRANSPORT_PROTOCOL], str(config_path))
    else:
        chosen = TransportProtocol.MQTT
    proxy_settings: ProxySettings | None
    if proxy is not None:
        proxy_settings = parse_proxy_config(proxy, "--proxy")
        if proxy_settings is not None and proxy_settings.password is not None:
            raise LocalSettingError(
                "--proxy: a password on the command line is visible to every user (ps); "
                "give --proxy-password-file instead")
    elif PROXY_CONFIG in settings:
        proxy_settings = parse_proxy_config(settings[PROXY_CONFIG], str(config_path))
        if proxy_settings is not None and proxy_settings.password is not None:
            try:  # the file holds a secret now: the connection string's rules
                read_secret_file(str(config_path), "configuration file with a proxy password")
            except IdentityError as err:
                raise LocalSettingError(f"{err} (or give --proxy-password-file)") from None
    else:
        proxy_settings = None
    if proxy_password_file is not None:
        if proxy_settings is None or proxy_settings.username is None:
            raise LocalSettingError("--proxy-password-file needs a proxy with a user "
                                    f"(--proxy or {PROXY_CONFIG})")
        try:
            raw = read_secret_file(proxy_password_file, "proxy password file")
        except IdentityError as err:
            raise LocalSettingError(str(err)) from None
        try:
            password = raw.decode("utf-8").strip("\r\n")
        except UnicodeDecodeError:
            raise LocalSettingError(f"proxy password file {proxy_password_file} is not "
                                    "UTF-8 text") from None
        if not password or any(ch in password for ch in "\r\n"):
            raise LocalSettingError(f"proxy password file {proxy_password_file} must hold "
                                    "one line")
        proxy_settings = ProxySettings(proxy_settings.host, proxy_settings.port,
                                       proxy_settings.username, password)
    return UplinkTransport(chosen, proxy_settings)


def load_dps_files(config_path: str | Path | None) -> dict[str, str]:
    """The DPS settings of the configuration file, as DpsSettings.load's keyword arguments
    (the file's lowest layer: `local=`). Raises LocalSettingError for a value that is not a
    non-empty string."""
    settings = read_local_settings(config_path)
    found: dict[str, str] = {}
    for name, argument in DPS_SETTINGS.items():
        if name not in settings:
            continue
        value = settings[name]
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise LocalSettingError(f"{config_path}: {name} must be a non-empty string")
        found[argument] = value.strip()
    return found
