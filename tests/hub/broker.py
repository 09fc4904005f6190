"""Throwaway certificates (openssl CLI) and Debian's mosquitto as a managed child process.

The broker here is the plain MQTT core of the stand-in: it listens only on a loopback port
without TLS. Devices never reach it directly; they connect to the TLS front door of gate.py,
which checks their credentials and then splices the connection to this port. The hub client
(hub.py) connects here directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Days a throwaway certificate lives: long enough for any test session, short enough that a
# stray copy is useless.
CERT_DAYS = 2


class BrokerError(RuntimeError):
    """mosquitto or openssl failed; the message carries the command output or the log tail."""


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its unencrypted PEM key."""

    cert: Path
    key: Path


class Certificates:
    """A CA, a server certificate for localhost/127.0.0.1/127.0.0.2 and client certificates,
    all made with the openssl CLI in one directory.

    `ca` is what a client passes as server_verification_cert; `server` is what the TLS front
    door presents; `client(cn)` makes a device certificate signed by the CA (IoT Hub's
    CA-signed X.509 rule: its subject CN is the device id). `other_ca()` is a second,
    unrelated CA for the wrong-CA cases.
    """

    SERVER_NAMES = ("DNS:localhost", "IP:127.0.0.1", "IP:127.0.0.2")

    def __init__(self, directory: Path) -> None:
        if shutil.which("openssl") is None:
            raise BrokerError("openssl is not installed (apt-get install openssl)")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self._make_ca("ca", "iot-micro-agent test CA")
        self.server = self._make_leaf(
            self.ca,
            "server",
            "localhost",
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                "subjectAltName=" + ",".join(self.SERVER_NAMES),
            ],
        )
        self._other: CertPair | None = None
        self._renewals = 0

    @property
    def ca_pem(self) -> str:
        """The CA certificate as text (the SDK's server_verification_cert)."""
        return self.ca.cert.read_text()

    def other_ca(self) -> CertPair:
        """A second CA that signed nothing the stand-in trusts or presents."""
        if self._other is None:
            self._other = self._make_ca("other-ca", "unrelated test CA")
        return self._other

    def client(self, common_name: str, signer: CertPair | None = None) -> CertPair:
        """A client certificate with subject CN=common_name, signed by `signer` (default: the
        stand-in's CA). Made once per (name, signer)."""
        signer = signer or self.ca
        stem = f"client-{_file_safe(common_name)}-by-{signer.cert.stem}"
        existing = CertPair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        if existing.cert.exists() and existing.key.exists():
            return existing
        return self._make_leaf(
            signer,
            stem,
            common_name,
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=clientAuth",
            ],
        )

    def _make_ca(self, stem: str, subject: str) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        _run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(pair.key),
                "-out",
                str(pair.cert),
                "-days",
                str(CERT_DAYS),
                "-subj",
                f"/CN={subject}",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-addext",
                "subjectKeyIdentifier=hash",
            ],
            self.dir,
        )
        return pair

    def renew(self, common_name: str, days: int = CERT_DAYS) -> CertPair:
        """A new client certificate and key for common_name, signed by the stand-in's CA, as a
        renewal makes it (a new key, a new serial); `days` -1 makes one that has expired."""
        self._renewals += 1
        stem = f"renewed-{_file_safe(common_name)}-{self._renewals}"
        return self._make_leaf(self.ca, stem, common_name, [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=clientAuth",
        ], days=days)

    def _make_leaf(
        self, signer: CertPair, stem: str, common_name: str, extensions: list[str],
        days: int = CERT_DAYS,
    ) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.pem", self.dir / f"{stem}.key")
        csr = self.dir / f"{stem}.csr"
        ext = self.dir / f"{stem}.ext"
        ext.write_text(
            "\n".join(
                extensions + ["subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid,issuer"]
            )
            + "\n"
        )
        _run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(pair.key),
                "-out",
                str(csr),
                "-subj",
                f"/CN={common_name}",
            ],
            self.dir,
        )
        _run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(signer.cert),
                "-CAkey",
                str(signer.key),
                "-CAcreateserial",
                "-days",
                str(days),
                "-sha256",
                "-extfile",
                str(ext),
                "-out",
                str(pair.cert),
            ],
            self.dir,
        )
        return pair


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind test, SO_REUSEADDR like mosquitto)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port the kernel just handed out on host (free now; a caller binds it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_listening(
    host: str, port: int, timeout: float, alive: subprocess.Popen[bytes] | None = None
) -> bool:
    """Poll until a TCP connect to host:port succeeds; False on timeout or when `alive` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Mosquitto:
    """Debian's mosquitto on one plain loopback port, its config, persistence and log in
    `directory`. start() / stop() (SIGTERM: mosquitto saves its database) / kill() (SIGKILL:
    what autosave wrote survives) / restart, always on the same port.

    Config notes (each found by trying):
    - `user root`: started as root, mosquitto otherwise drops to user mosquitto and cannot
      write the persistence file in a root-owned temp dir.
    - `persistence true` + `autosave_on_changes true` + `autosave_interval 1`: the SDK never
      resubscribes after a reconnect (it relies on its persistent session), so a broker that
      dies must come back with every session, subscription and queued message; saving after
      each change makes that hold for SIGKILL too, not only for a clean stop.
    - `set_tcp_nodelay true`: a twin round trip drops from about 44 ms to about 2 ms.
    - `allow_anonymous true` on this listener only: credentials are checked by the gate in
      front of it, and the listener is loopback only.
    """

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(binary, os.X_OK):
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.data = self.dir / "data"
        self.data.mkdir(exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    "per_listener_settings true",
                    "user root",
                    "persistence true",
                    f"persistence_location {self.data}/",
                    "persistence_file mosquitto.db",
                    "autosave_on_changes true",
                    "autosave_interval 1",
                    "set_tcp_nodelay true",
                    # A device's queued messages survive any test outage.
                    "max_queued_messages 100000",
                    "max_inflight_messages 0",
                    f"log_dest file {self.log}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    "log_timestamp_format %H:%M:%S",
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        if not port_is_free(self.host, self.port):
            raise BrokerError(f"{self.host}:{self.port} is in use; mosquitto cannot listen there")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_listening(self.host, self.port, timeout, self.process):
            stderr = b""
            if self.process.poll() is None:
                self.process.kill()
            _, stderr = self.process.communicate(timeout=5)
            self.process = None
            raise BrokerError(
                f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s\n"
                f"stderr: {stderr.decode(errors='replace')}\nlog:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: mosquitto saves its database on the way out."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: an abrupt outage; only what autosave wrote survives."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
