"""A real HTTP CONNECT proxy for the uplink's tests: Debian's tinyproxy, as a child process with
its own configuration on a free loopback port, with or without Basic authentication.

tinyproxy 1.11 (bookworm) answers a CONNECT with a wrong password "401 Unauthorized" and one
without credentials "407 Proxy Authentication Required"; the SDK (through PySocks) raises for
both when it connects.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .broker import BrokerError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class TinyProxy:
    """tinyproxy on 127.0.0.1:port (a free one by default). start() / stop() keep the port, so
    a test can take the proxy away and bring it back."""

    def __init__(self, directory: Path, user: str | None = None, password: str | None = None,
                 port: int | None = None) -> None:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not Path(binary).exists():
            raise BrokerError("tinyproxy is not installed (apt-get install tinyproxy)")
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.user = user
        self.password = password
        self.log = self.dir / "tinyproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            "MaxClients 20",
            "Allow 127.0.0.1",
            # Only the hub's ports may be tunnelled, as a corporate proxy would have it.
            "ConnectPort 443",
            "ConnectPort 8883",
            "LogLevel Connect",
            f'LogFile "{self.log}"',
        ]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        conf = self.dir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        conf = self._write_config()
        self._proc = subprocess.Popen([self.binary, "-d", "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tinyproxy exited with {self._proc.returncode}:\n"
                                  f"{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"tinyproxy did not listen on {self.port}\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def tunnels(self) -> list[str]:
        """The CONNECT requests tinyproxy logged ("localhost:443", ...)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines() if self.log.exists() else []:
            if "Request (file descriptor" in line and "CONNECT " in line:
                found.append(line.rpartition("CONNECT ")[2].split(" ")[0])
        return found
