"""Who the agent is on IoT Hub and whom it trusts: the device or module connection string,
X.509 certificate files and an optional CA certificate for gateways and test hubs.

Where the connection string comes from, first match wins:

1. `--connection-string-file PATH` given on the command line: it must exist;
2. the `IOTHUB_CONNECTION_STRING` environment variable, when set and not empty;
3. the IoT Edge module environment (every $IOTEDGE_* of EDGE_ENV set): the agent is that
   module, connected to the Edge hub with tokens the workload API signs
   (agent.uplink.edge_workload);
4. the default file /etc/iot-micro-agent/connection_string, when it exists;
5. else no IoT Hub: the local delivery (the embedded default).

A connection-string file, and an X.509 key file, hold secrets: they must be regular files that
neither group nor others can access (mode & 0o077 == 0), owned by root or by the agent's user;
anything else is refused with a message naming the path and its mode. Everything is checked
once, at start, and a problem raises IdentityError with a message that never contains the key.
The key is never logged: HubIdentity's repr and describe() leave it out.
"""

from __future__ import annotations

import binascii
import os
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from agent.record import field, record

DEFAULT_CONNECTION_STRING_FILE = "/etc/iot-micro-agent/connection_string"
ENV_CONNECTION_STRING = "IOTHUB_CONNECTION_STRING"
ENV_CA_FILE = "IOTHUB_CA_FILE"
ENV_CERT_FILE = "IOTHUB_X509_CERT_FILE"
ENV_KEY_FILE = "IOTHUB_X509_KEY_FILE"

# The IoT Edge runtime gives each module these (agent.uplink.edge_workload reads the
# workload API's); all present means the agent runs as an IoT Edge module.
EDGE_ENV = ("IOTEDGE_WORKLOADURI", "IOTEDGE_DEVICEID", "IOTEDGE_MODULEID",
            "IOTEDGE_MODULEGENERATIONID", "IOTEDGE_IOTHUBHOSTNAME", "IOTEDGE_GATEWAYHOSTNAME",
            "IOTEDGE_APIVERSION", "IOTEDGE_AUTHSCHEME")
EDGE_AUTH_SCHEME = "sasToken"  # the only scheme the Edge runtime gives modules

# A connection string is a few hundred bytes; a key file a few kilobytes; a CA bundle (the
# whole Mozilla set is about 220 KB) stays under 1 MiB.
MAX_SECRET_BYTES = 64 * 1024
MAX_CA_BYTES = 1024 * 1024

_KNOWN_KEYS = ("HostName", "DeviceId", "ModuleId", "SharedAccessKey", "GatewayHostName", "x509")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
# IoT Hub device and module ids: up to 128 characters of letters, digits and -.%_*?!(),:=@$'
_ID = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")


class IdentityError(Exception):
    """The identity cannot be used; the message says why and is safe to print (no key)."""


@record(frozen=True)
class HubIdentity:
    """A device or module identity: SAS (a shared access key) or X.509 (certificate and key
    files). `ca_pem` is the trusted CA certificate(s) for the hub's TLS, None for the system
    store. `source` says where the connection string came from (for the log, never the
    string itself); `source_path` is the file it was read from, if any."""

    hostname: str
    device_id: str
    module_id: str | None
    gateway: str | None
    key: str | None = field(default=None, repr=False)
    cert_file: str | None = None
    key_file: str | None = None
    ca_pem: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    source: str = ""
    source_path: str | None = None
    edge: bool = False  # an IoT Edge module: the Edge runtime's workload API signs its tokens

    @property
    def auth(self) -> str:
        if self.edge:
            return "edge"
        return "sas" if self.key is not None else "x509"

    @property
    def client_id(self) -> str:
        return self.device_id if self.module_id is None else f"{self.device_id}/{self.module_id}"

    def connection_string(self) -> str:
        """The SAS connection string. Secret: never log it."""
        if self.key is None:
            raise IdentityError(f"{self.client_id} is an X.509 identity: it has no key")
        parts = [f"HostName={self.hostname}", f"DeviceId={self.device_id}"]
        if self.module_id is not None:
            parts.append(f"ModuleId={self.module_id}")
        parts.append(f"SharedAccessKey={self.key}")
        if self.gateway is not None:
            parts.append(f"GatewayHostName={self.gateway}")
        return ";".join(parts)

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        auth = {"sas": "SAS key", "edge": "tokens signed by the IoT Edge workload API"}.get(
            self.auth, f"X.509 certificate {self.cert_file}")
        ca = f", CA {self.ca_file}" if self.ca_file else ""
        return f"IoT Hub {self.hostname}{via} as {self.client_id} ({auth} from {self.source}{ca})"

    def secrets(self) -> list[str]:
        """What must never appear in a log line or a status file."""
        return [self.key] if self.key else []


def parse_connection_string(text: str, source: str = "the connection string") -> dict[str, str]:
    """The fields of a device or module connection string, checked: known keys only, no
    repeats, HostName and DeviceId present, exactly one of SharedAccessKey and x509=true, the
    key valid base64. Error messages name fields, never the key's value."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()  # quoted in an environment file
    if not text:
        raise IdentityError(f"{source} is empty")
    fields: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue  # a trailing ';'
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise IdentityError(f"{source}: {name[:40]!r} is not a Name=value pair")
        if name in ("SharedAccessKeyName", "SharedAccessSignature"):
            what = ("a hub-level (service policy) connection string"
                    if name == "SharedAccessKeyName" else "a SAS token, which expires")
            raise IdentityError(
                f"{source} is {what}, not a device's or module's: use the device or module "
                "connection string (HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=...)"
            )
        if name not in _KNOWN_KEYS:
            near = [k for k in _KNOWN_KEYS if k.lower() == name.lower()]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise IdentityError(f"{source}: unknown field {name[:40]!r}{hint}")
        if name in fields:
            raise IdentityError(f"{source}: {name} appears twice")
        fields[name] = value.strip()
    for required in ("HostName", "DeviceId"):
        if not fields.get(required):
            raise IdentityError(f"{source} lacks {required}")
    if not _HOST.match(fields["HostName"]):
        raise IdentityError(f"{source}: HostName {fields['HostName'][:80]!r} is not a host name")
    if "GatewayHostName" in fields and not _HOST.match(fields["GatewayHostName"]):
        raise IdentityError(f"{source}: GatewayHostName is not a host name")
    for name in ("DeviceId", "ModuleId"):
        if name in fields and not _ID.match(fields[name]):
            raise IdentityError(f"{source}: {name} {fields[name][:80]!r} is not a valid IoT Hub id")
    x509 = fields.get("x509")
    if x509 is not None and x509.lower() != "true":
        raise IdentityError(f"{source}: x509 must be 'true' when present")
    key = fields.get("SharedAccessKey")
    if key is not None and x509 is not None:
        raise IdentityError(f"{source} has both SharedAccessKey and x509=true: choose one")
    if key is None and x509 is None:
        raise IdentityError(f"{source} has neither SharedAccessKey nor x509=true")
    if key is not None:
        # base64 (about 0.3 MB of RSS) only where a key is: the local default has none.
        import base64

        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            raise IdentityError(f"{source}: SharedAccessKey is not valid base64")
    return fields


def _describe_mode(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o} ({stat.filemode(mode)})"


def read_secret_file(path: str, what: str) -> bytes:
    """A file holding a secret: a regular file, owned by root or the agent's user, that group
    and others cannot access. Checked on the open descriptor, so what is checked is what is
    read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise IdentityError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise IdentityError(f"cannot open {what} {path}: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o077:
            raise IdentityError(
                f"refusing {what} {path}: mode {_describe_mode(st.st_mode)} lets group or others "
                f"access it; it holds a secret: chmod 600 {path}"
            )
        me = os.geteuid()
        if st.st_uid not in (0, me):
            raise IdentityError(
                f"refusing {what} {path}: owned by uid {st.st_uid}, not root or the agent's "
                f"uid {me}: chown it"
            )
        if st.st_size > MAX_SECRET_BYTES:
            raise IdentityError(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
        if len(data) > MAX_SECRET_BYTES:
            raise IdentityError(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes")
        return data
    finally:
        os.close(fd)


def file_signature(path: str | None) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime ns) of a file, None when absent: the uplink retries a
    refused identity only when its file changed."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_ca(path: str) -> str:
    """The CA certificate(s) of a PEM file, checked to load as a trust store."""
    try:
        with open(path, "rb") as source:
            data = source.read(MAX_CA_BYTES + 1)
    except FileNotFoundError:
        raise IdentityError(f"CA file {path} does not exist") from None
    except OSError as err:
        raise IdentityError(f"cannot read CA file {path}: {err.strerror}") from None
    if len(data) > MAX_CA_BYTES:
        raise IdentityError(f"CA file {path} is larger than {MAX_CA_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IdentityError(f"CA file {path} is not PEM text (DER? convert it with openssl x509)") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise IdentityError(f"CA file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    import ssl  # here, not at the top: the local default (no hub) never loads ssl (4 MB RSS)

    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as err:
        raise IdentityError(f"CA file {path} does not load as a certificate: {err}") from None
    return text


def check_x509(cert_file: str, key_file: str) -> None:
    import ssl  # here, not at the top: the local default (no hub) never loads ssl (4 MB RSS)

    read_secret_file(key_file, "X.509 key file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError:
        raise IdentityError(f"X.509 certificate file {cert_file} does not exist") from None
    except ssl.SSLError as err:
        raise IdentityError(
            f"X.509 certificate {cert_file} and key {key_file} do not load together: "
            f"{err.reason or err}") from None
    except OSError as err:
        raise IdentityError(f"cannot read X.509 files {cert_file}, {key_file}: {err.strerror}") from None


def identity_from_fields(fields: Mapping[str, str], *, source: str, source_path: str | None = None,
                         ca_file: str | None = None, cert_file: str | None = None,
                         key_file: str | None = None) -> HubIdentity:
    ca_pem = load_ca(ca_file) if ca_file else None
    if "x509" in fields:
        if not cert_file or not key_file:
            raise IdentityError(
                f"{source} says x509=true: give the certificate and key files "
                f"(--x509-cert-file/--x509-key-file or {ENV_CERT_FILE}/{ENV_KEY_FILE})")
        check_x509(cert_file, key_file)
    elif cert_file or key_file:
        raise IdentityError(f"X.509 files were given but {source} uses a SharedAccessKey: "
                            "add x509=true instead of the key, or drop the files")
    return HubIdentity(
        hostname=fields["HostName"],
        device_id=fields["DeviceId"],
        module_id=fields.get("ModuleId") or None,
        gateway=fields.get("GatewayHostName") or None,
        key=fields.get("SharedAccessKey"),
        cert_file=cert_file if "x509" in fields else None,
        key_file=key_file if "x509" in fields else None,
        ca_pem=ca_pem,
        ca_file=ca_file,
        source=source,
        source_path=source_path,
    )


def edge_environment_present(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the IoT Edge module environment is present (every EDGE_ENV name set)."""
    env = os.environ if environ is None else environ
    return all(env.get(name) for name in EDGE_ENV)


def edge_identity(environ: Mapping[str, str]) -> HubIdentity:
    """The IoT Edge module the environment describes. The uplink gets the trust bundle and
    every token's signature from the workload API (agent.uplink.edge_workload)."""
    scheme = environ["IOTEDGE_AUTHSCHEME"]
    if scheme != EDGE_AUTH_SCHEME:
        raise IdentityError(f"IoT Edge auth scheme {scheme[:40]!r} is not supported (only "
                            f"{EDGE_AUTH_SCHEME}, the one the Edge runtime gives modules)")
    for name, value in (("IOTEDGE_IOTHUBHOSTNAME", environ["IOTEDGE_IOTHUBHOSTNAME"]),
                        ("IOTEDGE_GATEWAYHOSTNAME", environ["IOTEDGE_GATEWAYHOSTNAME"])):
        if not _HOST.match(value):
            raise IdentityError(f"${name} {value[:80]!r} is not a host name")
    for name in ("IOTEDGE_DEVICEID", "IOTEDGE_MODULEID"):
        if not _ID.match(environ[name]):
            raise IdentityError(f"${name} {environ[name][:80]!r} is not a valid IoT Hub id")
    return HubIdentity(
        hostname=environ["IOTEDGE_IOTHUBHOSTNAME"],
        device_id=environ["IOTEDGE_DEVICEID"],
        module_id=environ["IOTEDGE_MODULEID"],
        gateway=environ["IOTEDGE_GATEWAYHOSTNAME"],
        source=f"the IoT Edge module environment ({environ['IOTEDGE_WORKLOADURI']})",
        edge=True,
    )


def load_identity(
    connection_string_file: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    default_file: str = DEFAULT_CONNECTION_STRING_FILE,
) -> tuple[HubIdentity | None, str]:
    """(identity, why): the identity to connect with, or None for the local default, and a
    sentence for the start log saying where it came from or why there is none. Raises
    IdentityError when a configured identity cannot be used (the agent then refuses to
    start). `connection_string_file` is the command line's (None when not given); ca_file,
    cert_file and key_file default to their environment variables."""
    env = os.environ if environ is None else environ
    ca_file = ca_file or env.get(ENV_CA_FILE) or None
    cert_file = cert_file or env.get(ENV_CERT_FILE) or None
    key_file = key_file or env.get(ENV_KEY_FILE) or None
    from_env = env.get(ENV_CONNECTION_STRING, "")
    path: str | None = None
    if connection_string_file is not None:
        path = connection_string_file
    elif from_env.strip():
        fields = parse_connection_string(from_env, f"${ENV_CONNECTION_STRING}")
        ident = identity_from_fields(fields, source=f"${ENV_CONNECTION_STRING}", ca_file=ca_file,
                                     cert_file=cert_file, key_file=key_file)
        return ident, f"connection string from ${ENV_CONNECTION_STRING}"
    elif edge_environment_present(env):
        return edge_identity(env), "running as an IoT Edge module ($IOTEDGE_* environment)"
    elif Path(default_file).exists() or Path(default_file).is_symlink():
        path = default_file
    else:
        return None, (f"no IoT Hub configured ({default_file} does not exist and "
                      f"${ENV_CONNECTION_STRING} is not set)")
    data = read_secret_file(path, "connection-string file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError(f"connection-string file {path} is not text") from None
    fields = parse_connection_string(text, f"connection-string file {path}")
    ident = identity_from_fields(fields, source=path, source_path=path, ca_file=ca_file,
                                 cert_file=cert_file, key_file=key_file)
    note = ""
    if from_env.strip():
        note = f" (${ENV_CONNECTION_STRING} is set too and ignored: the file given wins)"
    return ident, f"connection string from {path}{note}"


def identity_files(ident: HubIdentity) -> tuple[str, ...]:
    """The files an identity was loaded from: the connection-string file, the X.509
    certificate and key. A change to any of them is a new identity (rotation)."""
    return tuple(p for p in (ident.source_path, ident.cert_file, ident.key_file) if p)


def files_signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int, int] | None, ...]:
    """file_signature of each path: a stat per file, no read."""
    return tuple(file_signature(p) for p in paths)


# -- certificate dates: a minimal DER walk (the standard library does not expose them) ------

_MAX_CERT_BYTES = 64 * 1024


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `at`; IdentityError when it does not fit."""
    if at + 2 > len(der):
        raise IdentityError("truncated DER")
    tag, first = der[at], der[at + 1]
    at += 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or at + count > len(der):
            raise IdentityError("bad DER length")
        size = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + size > len(der):
        raise IdentityError("truncated DER")
    return tag, at, at + size


def _der_time(tag: int, raw: bytes) -> float:
    import calendar

    text = raw.decode("ascii", "replace")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z")):  # GeneralizedTime
        raise IdentityError(f"unsupported certificate time {text[:20]!r}")
    if not text[:14].isdigit():
        raise IdentityError(f"bad certificate time {text[:20]!r}")
    fields = [int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
              int(text[10:12]), int(text[12:14])]
    return float(calendar.timegm((*fields, 0, 0, 0)))


def certificate_validity(cert_file: str) -> tuple[float, float]:
    """(notBefore, notAfter) of the first certificate of a PEM file, as Unix times."""
    import ssl  # here: the local default never loads ssl (see check_x509)

    try:
        with open(cert_file, "rb") as source:
            text = source.read(_MAX_CERT_BYTES).decode("ascii", "replace")
    except OSError as err:
        raise IdentityError(f"cannot read X.509 certificate {cert_file}: {err.strerror}") from None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise IdentityError(f"X.509 certificate {cert_file} holds no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)])
        _, cert, _ = _tlv(der, 0)
        _, tbs, tbs_end = _tlv(der, cert)
        at = tbs
        tag, _, after = _tlv(der, at)
        if tag == 0xA0:  # [0] version
            at = after
        for _ in range(3):  # serialNumber, signature, issuer
            at = _tlv(der, at)[2]
        _, validity, _ = _tlv(der, at)
        tag, start_at, end_at = _tlv(der, validity)
        not_before = _der_time(tag, der[start_at:end_at])
        tag, start_at, end_at = _tlv(der, end_at)
        not_after = _der_time(tag, der[start_at:end_at])
    except (ValueError, IndexError) as err:
        raise IdentityError(f"X.509 certificate {cert_file} is not a certificate: {err}") from None
    if at > tbs_end:
        raise IdentityError(f"X.509 certificate {cert_file} is not a certificate")
    return not_before, not_after


def check_renewed(ident: HubIdentity, now: float) -> None:
    """What a renewed identity must pass beyond load_identity's checks before the uplink drops
    a working connection for it: an X.509 certificate valid now. (Not checked at start: a
    device whose clock is not set yet must still be able to try.)"""
    if ident.cert_file is None:
        return
    not_before, not_after = certificate_validity(ident.cert_file)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_after))
    if not_after <= now:
        raise IdentityError(f"X.509 certificate {ident.cert_file} expired at {stamp}")
    if not_before > now:
        start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_before))
        raise IdentityError(f"X.509 certificate {ident.cert_file} is not valid before {start}")
