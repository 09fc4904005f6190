"""The agent as a systemd service, with no dependency beyond the standard library.

- sd_notify: `Notifier` writes the service manager's datagrams to $NOTIFY_SOCKET (a path, or
  an abstract socket written `@name`): READY=1 once every collector has been started and the
  loop has turned once, WATCHDOG=1 at half of $WATCHDOG_USEC (when $WATCHDOG_PID is unset or
  names this process), STATUS= one-line summaries when they change, STOPPING=1 at shutdown.
  The loop (agent.pipeline) sends them itself, so a loop that hangs stops the pings and the
  service manager restarts it. The variables are removed from the environment once read, so
  the agent's child processes (agent.inventory) never answer for it.
- Where the files are: the data directory defaults to $STATE_DIRECTORY (StateDirectory=),
  else /var/lib/iot-micro-agent; status.json goes to the runtime directory ($RUNTIME_DIRECTORY
  from RuntimeDirectory=, or --runtime-dir; a tmpfs under systemd, so no flash write every
  5 s) when there is one, else to the data directory as without systemd. With a runtime
  directory DATA/status.json is a symbolic link to it, made once at start, so that
  `micro-agent status` finds the file from the data directory alone.
- Logging: with stderr connected to the journal ($JOURNAL_STREAM names stderr's device and
  inode, the check systemd documents) each line carries a `<N>` syslog priority prefix and no
  timestamp (the journal keeps its own); otherwise `time level logger: message`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("agent")

DEFAULT_DATA_DIR = "/var/lib/iot-micro-agent"
STATUS_FILE = "status.json"

# sd-daemon.h's priorities, by logging level: an unknown level is logged as info.
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"


# --- sd_notify ---------------------------------------------------------------------------------


class Notifier:
    """Datagrams to the service manager. Without $NOTIFY_SOCKET every method does nothing, so
    the loop calls them unconditionally. A failed send is logged once and never raised: the
    agent's work does not depend on the service manager hearing from it."""

    def __init__(self, address: str | bytes | None = None,
                 watchdog_interval_s: float | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s
        # When the next WATCHDOG=1 is due (monotonic time); inf without a watchdog.
        self.watchdog_due = math.inf
        self._socket: socket.socket | None = None
        self._ready = False
        self._status = ""
        self._failed = False
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if address is not None and watchdog_interval_s is not None:
            self.watchdog_due = 0.0

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None,
                     pid: int | None = None) -> Notifier:
        """The notifier systemd's variables describe, which are then removed from environ
        (os.environ by default) as sd_notify(3) does with unset_environment."""
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        where = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        watchdog_pid = env.pop("WATCHDOG_PID", "")
        address = notify_address(where)
        if address is None:
            return cls()
        interval: float | None = None
        if usec:
            try:
                microseconds = int(usec)
                owner = int(watchdog_pid) if watchdog_pid else pid
            except ValueError:
                log.warning("service: ignoring WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec,
                            watchdog_pid)
            else:
                # The watchdog is another process's when WATCHDOG_PID names it.
                if microseconds > 0 and owner == pid:
                    interval = microseconds / 2e6
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, message: str) -> bool:
        """One datagram of newline-separated KEY=VALUE assignments; True when sent."""
        if self._socket is None or self.address is None:
            return False
        try:
            self._socket.sendto(message.encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as err:
            if not self._failed:
                self._failed = True
                log.warning("service: cannot notify %r: %s", self.address, err)
            return False
        return True

    def ready(self) -> None:
        """Every collector is started and the loop has turned once: READY=1, once."""
        if not self._ready:
            self._ready = True
            self.send("READY=1")

    def status(self, text: str) -> None:
        """STATUS=text when it differs from the last one sent (one line: newlines become
        spaces, since a newline would start another assignment)."""
        line = " ".join(text.split())
        if line != self._status and self.send("STATUS=" + line):
            self._status = line

    def keepalive(self, now: float) -> None:
        """WATCHDOG=1 when due at monotonic time now (the loop calls this every turn and
        wakes up by watchdog_due). A failed send is tried again after a tenth of the
        interval, well within the watchdog's timeout."""
        if now < self.watchdog_due or self.watchdog_interval_s is None:
            return
        sent = self.send("WATCHDOG=1")
        self.watchdog_due = now + self.watchdog_interval_s * (1.0 if sent else 0.1)

    def stopping(self, text: str = "stopping: flushing collectors and lanes") -> None:
        """STOPPING=1: the service manager then knows the exit is asked for, not a crash."""
        self.watchdog_due = math.inf
        self.send("STOPPING=1\nSTATUS=" + " ".join(text.split()))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def notify_address(where: str) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET names: a path, or `@name` for the abstract socket
    `\\0name`; None for nothing or a kind this agent does not speak (vsock:)."""
    if where.startswith("/"):
        return where
    if where.startswith("@") and len(where) > 1:
        return b"\0" + where[1:].encode()
    if where:
        log.warning("service: NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying",
                    where)
    return None


def status_line(doc: Mapping[str, Any]) -> str:
    """The one-line STATUS= summary of a status document (agent.runtime.status):
    collectors by state, the unavailable ones named, the outbox depth, the uplink."""
    states: dict[str, list[str]] = {}
    for name, entry in doc.get("collectors", {}).items():
        states.setdefault(str(entry.get("state", "?")), []).append(name)
    parts = []
    for state in sorted(states):
        names = states[state]
        part = f"{len(names)} {state}"
        if state not in ("running", "disabled"):
            part += " (" + ", ".join(sorted(names)) + ")"
        parts.append(part)
    depth = doc.get("outbox", {}).get("depth", {})
    batches = sum(int(d.get("count", 0)) for d in depth.values())
    uplink = doc.get("uplink", {})
    way = str(uplink.get("kind", "?"))
    if uplink.get("state"):
        way += f" {uplink['state']}"
    return (f"collectors: {', '.join(parts) or 'none'}; outbox: {batches} batches; "
            f"uplink: {way}")


# --- where the files are ----------------------------------------------------------------------


def default_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """$STATE_DIRECTORY's first entry (systemd joins several with ':'), else the default."""
    env = os.environ if environ is None else environ
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return first or DEFAULT_DATA_DIR


def runtime_dir(option: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """--runtime-dir, else $RUNTIME_DIRECTORY's first entry, else None (no runtime
    directory: the status file stays in the data directory)."""
    env = os.environ if environ is None else environ
    where = option or env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(where) if where else None


def status_path(data_dir: Path, runtime: Path | None) -> Path:
    """Where the running agent writes status.json and `micro-agent status` reads it."""
    return (runtime if runtime is not None else data_dir) / STATUS_FILE


def link_status(data_dir: Path, status: Path) -> None:
    """Make DATA/status.json lead to status when that is elsewhere: a symbolic link,
    replaced by a rename, and only when it does not point there already (one write per start
    at most, none when nothing changed)."""
    link = data_dir / STATUS_FILE
    if status == link:
        return
    target = str(status.absolute())
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass  # missing, or a regular file from a run without a runtime directory
    tmp = link.with_suffix(".link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as err:
        log.warning("status: cannot link %s to %s: %s", link, status, err)


# --- logging ------------------------------------------------------------------------------------


def on_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether stream is the journal's: $JOURNAL_STREAM is `device:inode` of the stream
    systemd connected, and a process whose stderr was redirected must not take it for its
    own (systemd.exec(5))."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return False


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, N the syslog priority; every line of a multi-line record (a
    traceback) carries the prefix, since the journal reads each line as an entry."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def log_handler(stream: TextIO, environ: Mapping[str, str] | None = None) -> logging.Handler:
    """The agent's one log handler: to stream, in the journal's format when stream is it."""
    handler = logging.StreamHandler(stream)
    if on_journal(stream, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    return handler
