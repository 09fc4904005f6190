"""SBoM: the dpkg package set equals `dpkg-query -W` exactly; an opkg status file made by the
test is read exactly; no cap on the count, sent in as many batches as needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import skip_unless_ci

from agent.inventory import sbom


def _dpkg_query(fmt: str) -> list[list[str]]:
    if shutil.which("dpkg-query") is None:
        skip_unless_ci("dpkg-query is not installed")
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], check=True, capture_output=True,
                         text=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def _dpkg_name(event: dict[str, object]) -> str:
    # dpkg-query's ${binary:Package}: name:arch for Multi-Arch: same packages.
    name = str(event["name"])
    return f"{name}:{event['arch']}" if event.get("multiarch") == "same" else name


def test_dpkg_equals_dpkg_query() -> None:
    plain = {(row[0], row[1]) for row in _dpkg_query("${binary:Package}\t${Version}\n")}
    # dpkg-query -W also lists packages whose configuration files alone remain (rc): no
    # installed software, so the gatherer leaves them out. Ask dpkg which those are.
    gone = {(row[0], row[1]) for row in
            _dpkg_query("${binary:Package}\t${Version}\t${db:Status-Status}\n")
            if row[2] in ("config-files", "not-installed")}
    snap = sbom.gather(rpm=False)
    assert snap.errors == []
    dpkg = [e for e in snap.events if e["mgr"] == "dpkg"]
    ours = [(_dpkg_name(e), str(e["ver"])) for e in dpkg]
    assert len(ours) == len(set(ours))
    assert set(ours) == plain - gone
    assert len(ours) > 50
    by_name = {_dpkg_name(e): e for e in dpkg}
    rows = _dpkg_query("${binary:Package}\t${Architecture}\t${Maintainer}\t${source:Package}\n")
    for name, arch, maintainer, source in rows:
        if name in by_name:
            event = by_name[name]
            assert event["arch"] == arch
            assert event["vendor"] == maintainer
            assert event.get("srcpkg", name.split(":")[0]) == source
            assert event["t"] == "pkg" and event["src"] == "sbom"


OPKG_STATUS = """\
Package: busybox
Version: 1.36.1-1
Depends: libc, jsonfilter
Status: install user installed
Architecture: aarch64_cortex-a53
Conffiles:
 /etc/syslog.conf 4a1b2c3d
Installed-Time: 1700000000

Package: dropbear
Version: 2022.82-6
Depends: libc
Status: install ok installed
Architecture: aarch64_cortex-a53
Maintainer: OpenWrt <openwrt-devel@lists.openwrt.org>
Source: package/network/services/dropbear
Installed-Time: 1700000001

Package: kmod-removed
Version: 6.1.0-1
Status: deinstall ok not-installed
Architecture: aarch64_cortex-a53

Package: base-files
Version: 1:1551-r23630
Status: install ok installed
Architecture: aarch64_cortex-a53
"""


def test_opkg_status_read_exactly(tmp_path: Path) -> None:
    status = tmp_path / "usr/lib/opkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(OPKG_STATUS)
    snap = sbom.gather(tmp_path, rpm=False)
    assert snap.errors == []
    assert any(s.startswith("dpkg:") for s in snap.skipped)
    got = [{k: v for k, v in e.items() if k != "ts"} for e in snap.events]
    base = {"t": "pkg", "src": "sbom", "mgr": "opkg", "arch": "aarch64_cortex-a53"}
    assert got == [
        {**base, "name": "busybox", "ver": "1.36.1-1"},
        {**base, "name": "dropbear", "ver": "2022.82-6",
         "vendor": "OpenWrt <openwrt-devel@lists.openwrt.org>",
         "srcpkg": "package/network/services/dropbear"},
        {**base, "name": "base-files", "ver": "1:1551-r23630"},
    ]


def test_malformed_paragraphs_are_counted(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/opkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Version: 1\nStatus: install ok installed\n\n"
                      "Package: a\nStatus: install ok\nVersion: 1\n\n"
                      "Package: b\nStatus: install ok installed\n\n"
                      "Package: c\nthis line has no colon\nVersion: 2\n"
                      "Status: install ok installed\n")
    snap = sbom.gather(tmp_path, rpm=False)
    assert [e["name"] for e in snap.events] == ["c"]
    assert len(snap.errors) == 4, snap.errors


def test_rpm_absent_is_skipped_with_the_reason() -> None:
    snap = sbom.gather(Path("/nonexistent-root"), rpm=True)
    if shutil.which("rpm") is None:
        assert "rpm: the rpm tool is not installed" in snap.skipped
    else:
        assert not any(s.startswith("rpm:") for s in snap.skipped)


def test_cache_sends_the_same_packages_and_sees_every_change(tmp_path: Path) -> None:
    """With a StatusCache an unchanged status file gives the packages (and parse errors) of
    the first snapshot under the new snapshot's time; a file rewritten in place (even at the
    same size), replaced by a rename as dpkg does, or removed is read again."""
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    broken = "Package: x\nthis line has no colon\nVersion: 9\nStatus: install ok installed\n\n"
    status.write_text(broken + OPKG_STATUS)
    cache = sbom.StatusCache()

    def without_ts(snap: sbom.Snapshot) -> list[dict[str, object]]:
        return [{k: v for k, v in e.items() if k != "ts"} for e in snap.events]

    first = sbom.gather(tmp_path, rpm=False, cache=cache)
    fresh = sbom.gather(tmp_path, rpm=False)
    assert [e["name"] for e in first.events] == ["x", "busybox", "dropbear", "base-files"]
    assert len(first.errors) == 1
    time.sleep(0.002)
    again = sbom.gather(tmp_path, rpm=False, cache=cache)
    assert without_ts(again) == without_ts(first) == without_ts(fresh)
    assert [list(e) for e in again.events] == [list(e) for e in fresh.events], "key order"
    assert again.errors == first.errors == fresh.errors
    assert again.skipped == first.skipped
    assert {e["ts"] for e in again.events} == {again.events[0]["ts"]}
    assert again.events[0]["ts"] > first.events[0]["ts"]
    # In place, the same size: busybox's version changes.
    status.write_text((broken + OPKG_STATUS).replace("1.36.1-1", "1.36.1-2"))
    assert [e["ver"] for e in sbom.gather(tmp_path, rpm=False, cache=cache).events][1] == "1.36.1-2"
    # Replaced by a rename, without the broken paragraph.
    new = status.with_name("status-new")
    new.write_text(OPKG_STATUS.replace("busybox", "toybox"))
    new.rename(status)
    renamed = sbom.gather(tmp_path, rpm=False, cache=cache)
    assert [e["name"] for e in renamed.events] == ["toybox", "dropbear", "base-files"]
    assert renamed.errors == []
    status.unlink()
    gone = sbom.gather(tmp_path, rpm=False, cache=cache)
    assert gone.events == [] and any(s.startswith("dpkg:") for s in gone.skipped)


# In a fresh interpreter: VmRSS before and after a snapshot of a 3,000-package status file
# (without a cache; the results dropped), by the collector's way (gather_batch) or with every
# package as a dict at once (gather).
RETAINED = r"""
import gc, sys
from pathlib import Path
from agent.inventory import sbom
from agent.native.heap import return_freed_memory

return_freed_memory()  # as `micro-agent run` does first: large freed blocks leave the heap

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

before = rss_kb()
if sys.argv[2] == "batch":
    snap, batch = sbom.gather_batch(Path(sys.argv[1]), rpm=False)
    head = sbom.msgpack.Unpacker()
    head.feed(batch[:5] if batch else b"\x90")
    count = head.read_array_header()
    del batch
else:
    snap = sbom.gather(Path(sys.argv[1]), rpm=False)
    count = len(snap.events)
del snap
gc.collect()
print(count, rss_kb() - before)
"""


def test_a_snapshot_leaves_no_package_dicts_in_the_rss(tmp_path: Path) -> None:
    """The collector's batch is packed as the status file is parsed (and a cache hit is
    re-stamped one event at a time): the packages never exist as dicts all at once, whose
    small objects, once freed, would stay in the interpreter's memory (docs/performance.md)."""
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("".join(
        f"Package: package-{i}\nStatus: install ok installed\nVersion: {i}.0-{i % 7}+deb12u1\n"
        f"Architecture: amd64\nMaintainer: Maintainer {i % 50} <m{i % 50}@example.org>\n"
        f"Source: source-{i // 3}\nMulti-Arch: same\nDescription: package {i}\n"
        " a description line of the package that the gatherer does not use\n\n"
        for i in range(3000)))
    retained = {}
    for way in ("batch", "dicts"):
        done = subprocess.run([sys.executable, "-c", RETAINED, str(tmp_path), way], check=True,
                              capture_output=True, text=True)
        count, kb = map(int, done.stdout.split())
        assert count == 3000
        retained[way] = kb
    # The dicts' way keeps about 0.5 kB per package once they are freed; the batch's way
    # keeps what its paragraphs and events, one at a time, touched.
    assert retained["dicts"] > 1000, retained
    assert retained["batch"] < retained["dicts"] / 4, retained
