"""SBoM: the installed software packages, from every package database the device has: the dpkg
status database (Debian, Ubuntu, Raspberry Pi OS), the opkg status file (OpenWrt, Yocto) and
rpm when its tool is installed. No cap on the count: the agent's loop sends them in as many
batches as needed.

A running agent keeps a `StatusCache`: a status file whose identity (inode, size, modification
and change times) is unchanged since the last snapshot is not read again; its packages are sent
again under the new snapshot's time. dpkg and opkg replace the file (or at least rewrite it) at
every change, so any change is seen at the next snapshot."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgpack

from agent.inventory import Event, Snapshot, now_ms, on_path, read_text, under

SRC = "sbom"

DPKG_STATUS = "/var/lib/dpkg/status"
# opkg keeps its status in one of these, by distribution and configuration (OpenWrt uses the
# first; Yocto images either).
OPKG_STATUS = ("/usr/lib/opkg/status", "/var/lib/opkg/status")

# The third word of Status: the package's files are on disk in these states. "config-files"
# and "not-installed" leave no program behind, so they are no installed software.
_PRESENT_STATES = frozenset(
    {"installed", "unpacked", "half-configured", "half-installed", "triggers-awaited",
     "triggers-pending"}
)

RPM_FORMAT = (
    "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\t%{VENDOR}\\t"
    "%{SOURCERPM}\\n"
)


def _lines(text: str) -> Iterator[str]:
    """text.splitlines(), one paragraph at a time: all at once, a status file's lines (25,000
    small strings on a 970-package system) were freed among what the agent keeps, and their
    memory stayed in its RSS (2 MB)."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n\n", start)
        stop = end if stop < 0 else stop + 1  # the paragraph's last line with its end
        yield from text[start:stop].splitlines()
        start = stop


def paragraphs(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """The paragraphs of a deb822 control file (dpkg and opkg status): (first line number,
    field -> value). Continuation lines (starting with a space or tab) are folded into the
    field before them; fields this module does not use may hold them (Description, Conffiles)."""
    fields: dict[str, str] = {}
    start = 0
    last: str | None = None
    for number, line in enumerate(_lines(text), 1):
        if not line.strip():
            if fields:
                yield start, fields
            fields = {}
            last = None
            continue
        if line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            # A line that is neither a field nor a continuation: keep it visible to the
            # caller as a field without a name, so it can count it.
            fields.setdefault("", line)
            continue
        if not fields:
            start = number
        last = name.strip()
        fields[last] = value.strip()
    if fields:
        yield start, fields


def _source_name(value: str) -> str:
    # "Source: glibc (2.36-9)" names the source package and, when it differs, its version.
    return value.split(" ", 1)[0]


def _control_packages(
    text: str, path: str, manager: str, ts: int, snap: Snapshot
) -> Iterator[Event]:
    for line, fields in paragraphs(text):
        if "" in fields:
            snap.error(path, f"paragraph at line {line}: malformed line {fields['']!r}")
        name = fields.get("Package")
        status = fields.get("Status", "").split()
        if not name:
            snap.error(path, f"paragraph at line {line}: no Package field")
            continue
        if len(status) != 3:
            snap.error(path, f"{name}: malformed Status {fields.get('Status')!r}")
            continue
        if status[2] not in _PRESENT_STATES:
            continue
        version = fields.get("Version")
        if version is None:
            snap.error(path, f"{name}: no Version field")
            continue
        event: Event = {
            "t": "pkg",
            "ts": ts,
            "src": SRC,
            "mgr": manager,
            "name": name,
            "ver": version,
        }
        arch = fields.get("Architecture")
        if arch:
            event["arch"] = arch
        vendor = fields.get("Maintainer") or fields.get("Vendor")
        if vendor:
            event["vendor"] = vendor
        source = fields.get("Source")
        if source:
            event["srcpkg"] = _source_name(source)
        multi = fields.get("Multi-Arch")
        if multi:
            event["multiarch"] = multi
        if status[2] != "installed":
            event["state"] = status[2]
        yield event


# Events packed one after the other (msgpack maps, no array header) and how many they are.
Packed = tuple[int, bytes]


def _pack(events: Iterable[Event]) -> Packed:
    """Each event packed as it comes: the events of a status file never exist as dicts all at
    once (on a 970-package system they were 0.8 MB of small objects at the snapshot's peak,
    memory the interpreter keeps for itself once freed: settled RSS)."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    count = 0
    for event in events:
        packer.pack(event)
        count += 1
    return count, packer.bytes()


def _restamped(packed: bytes, ts: int) -> Iterator[Event]:
    """The packed events one at a time, each with the snapshot's `ts`."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(packed))
    unpacker.feed(packed)
    for event in unpacker:
        event["ts"] = ts
        yield event


# What identifies one version of a status file: inode, device, size, mtime and ctime (ns).
FileKey = tuple[int, int, int, int, int]


class StatusCache:
    """The packages and parse errors of each status file read, by the file's identity. The
    packages are kept packed (msgpack): about 150 bytes each, where the
    dicts would hold four times that in a running agent between two snapshots."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[FileKey, Packed, list[str]]] = {}

    def packages(self, root: Path, path: str, manager: str, ts: int,
                 snap: Snapshot) -> Packed | None:
        """The packages of the status file at path (None: it does not exist), parsed again
        only when the file changed; errors as a fresh parse would record them."""
        try:
            st = os.stat(under(root, path))
        except FileNotFoundError:
            self._files.pop(path, None)
            return None
        except OSError:
            st = None  # read_text records the reason
        key = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns) if st else None
        cached = self._files.get(path)
        if key is not None and cached is not None and cached[0] == key:
            snap.errors.extend(cached[2])
            count, packed = cached[1]
            # The ts is overwritten in place: the keys keep their order.
            return _pack(_restamped(packed, ts)) if count else cached[1]
        text = read_text(root, path, snap)
        if text is None:
            self._files.pop(path, None)
            return None
        errors_before = len(snap.errors)
        packages = _pack(_control_packages(text, path, manager, ts, snap))
        if key is not None:
            self._files[path] = (key, packages, snap.errors[errors_before:])
        return packages


def _rpm(root: Path, ts: int, snap: Snapshot) -> list[Event]:
    rpm = on_path("rpm")
    if rpm is None:
        snap.skip("rpm", "the rpm tool is not installed")
        return []
    # Only an rpm system runs a tool: subprocess stays out of the agent on the others.
    import subprocess

    args = [rpm, "-qa", "--queryformat", RPM_FORMAT]
    if root != Path("/"):
        args[1:1] = ["--root", str(root)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        snap.error("rpm", exc)
        return []
    if done.returncode != 0:
        snap.error("rpm", f"exit {done.returncode}: {done.stderr.decode(errors='replace')[:200]}")
        return []
    events: list[Event] = []
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 5:
            snap.error("rpm", f"malformed line {line!r}")
            continue
        name, version, arch, vendor, source = parts
        if name == "gpg-pubkey":
            # Keys imported into the rpm database, not software.
            continue
        event: Event = {"t": "pkg", "ts": ts, "src": SRC, "mgr": "rpm", "name": name,
                        "ver": version}
        if arch and arch != "(none)":
            event["arch"] = arch
        if vendor and vendor != "(none)":
            event["vendor"] = vendor
        if source and source != "(none)":
            event["srcpkg"] = source
        events.append(event)
    return events


def gather_batch(root: Path = Path("/"), rpm: bool = True,
                 cache: StatusCache | None = None) -> tuple[Snapshot, bytes | None]:
    """A `pkg` event per installed package of every package database found under root, as one
    msgpack array (the batch the collector sends; None: no package), and the snapshot's errors
    and skipped parts (its events stay empty). With a cache (kept by the caller from one
    snapshot to the next) unchanged status files are not read again."""
    snap = Snapshot()
    ts = now_ms()
    files = cache if cache is not None else StatusCache()
    parts: list[Packed] = []
    packages = files.packages(root, DPKG_STATUS, "dpkg", ts, snap)
    if packages is None:
        snap.skip("dpkg", f"{DPKG_STATUS} does not exist")
    else:
        parts.append(packages)
    for path in OPKG_STATUS:
        packages = files.packages(root, path, "opkg", ts, snap)
        if packages is not None:
            parts.append(packages)
            break
    else:
        snap.skip("opkg", "no opkg status file")
    if rpm:
        parts.append(_pack(_rpm(root, ts, snap)))
    count = sum(n for n, _ in parts)
    if not count:
        return snap, None
    head = msgpack.Packer().pack_array_header(count)
    return snap, b"".join([head, *(packed for _, packed in parts)])


def gather(root: Path = Path("/"), rpm: bool = True, cache: StatusCache | None = None) -> Snapshot:
    """gather_batch's packages as events (dicts) in the snapshot."""
    snap, batch = gather_batch(root, rpm, cache)
    if batch is not None:
        snap.events = msgpack.unpackb(batch, raw=False)
    return snap
