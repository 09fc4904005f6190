"""The arm64 package smoke test: the arm64 package, installed with dpkg into an arm64 Debian
bookworm root file system and run there under qemu-user, gives the same events as the amd64
package in an amd64 one with the same packages: `micro-agent parse-audit` on the recorded audit
logs, and `micro-agent collect` of SBoM, LocalUsers and Baseline.

scripts/build-deb builds both packages; scripts/rootfs makes each root file system from Debian's
Essential packages and the package's Depends (cached by that list: a second run reuses them).
Each command runs chrooted in a mount namespace of its own with /proc mounted: the mount ends
with the command, whatever becomes of the test. Both root file systems see this machine's
kernel, so the checks that read it (Baseline's sysctls) read the same values. docs/cross-arch.md
says how to run it and what it compares.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import DEVICE_LOGS, FIXTURES, skip_unless_ci

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("amd64", "arm64")
# What uname -m says in each root file system: arm64's under qemu-aarch64 through binfmt_misc.
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64
PACKAGE = "iot-micro-agent"
TOOLS = ("mmdebstrap", "arch-test", "qemu-aarch64-static", "unshare", "chroot", "dpkg-deb")
# The chroot's environment: nothing of the test's (its PATH leads to a virtual environment).
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
COLLECTED = ("SBoM", "LocalUsers", "Baseline")

# The first test's time includes the packages' and root file systems' builds: about 4 minutes
# on 2 busy cores when nothing is cached, more than pytest's default 600 s leaves to spare.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(900)]


@dataclass
class Installed:
    """One architecture's root file system with the package installed."""

    arch: str
    root: Path
    # micro-agent's output per command: parse-audit per log, collect per collector.
    out: dict[str, bytes]
    seconds: dict[str, float]


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def in_root(root: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """argv chrooted into root, with /proc mounted in a mount namespace that ends with it."""
    script = 'mount -t proc proc "$1/proc" && exec chroot "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(root),
         *argv],
        capture_output=True, timeout=timeout, env=CHROOT_ENV, check=False,
    )


def _checked(done: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{what}: exit {done.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{what}:\n{err[-3000:]}"
    return done.stdout


def _run(argv: list[str], what: str, timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, cwd=ROOT)
    return _checked(done, what).decode()


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mmdebstrap --mode=root, chroot, mount")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        skip_unless_ci(f"missing {', '.join(missing)} (Debian: mmdebstrap arch-test "
                       "qemu-user-static; scripts/test installs them)")
    out = tmp_path_factory.mktemp("deb")
    _run([str(ROOT / "scripts/build-deb"), "--out", str(out), *ARCHES], "scripts/build-deb",
         timeout=900)
    debs = {arch: list(out.glob(f"{PACKAGE}_*_{arch}.deb")) for arch in ARCHES}
    for arch, found in debs.items():
        assert len(found) == 1, f"scripts/build-deb wrote {found} for {arch}"
    return {arch: found[0] for arch, found in debs.items()}


def _rootfs(arch: str, deb: Path) -> tuple[Path, float]:
    """scripts/rootfs's tarball for the package, and how long it took to get it."""
    start = time.monotonic()
    tarball = _run([str(ROOT / "scripts/rootfs"), arch, str(deb)], f"scripts/rootfs {arch}",
                   timeout=900).splitlines()[-1]
    return Path(tarball), time.monotonic() - start


def _install(arch: str, deb: Path, tarball: Path, base: Path) -> Installed:
    seconds: dict[str, float] = {}
    root = base / arch
    root.mkdir()
    start = time.monotonic()
    _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball),
          "-C", str(root)], f"extracting {tarball}", timeout=300)
    seconds["extract"] = time.monotonic() - start

    shutil.copy(deb, root / "tmp" / deb.name)
    for log in DEVICE_LOGS:
        shutil.copy(FIXTURES / log, root / "tmp" / log)
    start = time.monotonic()
    _checked(in_root(root, "dpkg", "-i", f"/tmp/{deb.name}"), f"dpkg -i {deb.name} ({arch})")
    seconds["dpkg -i"] = time.monotonic() - start

    out: dict[str, bytes] = {}
    start = time.monotonic()
    for log in DEVICE_LOGS:
        out[log] = _checked(in_root(root, "micro-agent", "parse-audit", f"/tmp/{log}"),
                            f"micro-agent parse-audit {log} ({arch})")
    for name in (*COLLECTED, "Process"):
        out[name] = _checked(in_root(root, "micro-agent", "collect", name),
                             f"micro-agent collect {name} ({arch})")
    seconds["micro-agent"] = time.monotonic() - start
    return Installed(arch, root, out, seconds)


@pytest.fixture(scope="module")
def installed(
    packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Installed]]:
    base = tmp_path_factory.mktemp("rootfs")
    try:
        # Both built at once: a cold arm64 build spends most of its time in dpkg and
        # maintainer scripts under qemu-user, one process at a time.
        with ThreadPoolExecutor(len(ARCHES)) as pool:
            built = dict(zip(ARCHES, pool.map(_rootfs, ARCHES, [packages[a] for a in ARCHES])))
        done = {}
        for arch in ARCHES:
            tarball, seconds = built[arch]
            done[arch] = _install(arch, packages[arch], tarball, base)
            done[arch].seconds = {"rootfs": seconds, **done[arch].seconds}
        for arch, each in done.items():
            print(f"{arch}: " + ", ".join(f"{k} {v:.1f} s" for k, v in each.seconds.items()))
        yield done
    finally:
        # Every mount was in a namespace that ended with its command; were one left, removing
        # the tree would reach into what it mounts.
        left = _mounts_under(base)
        assert not left, f"mounts left under {base}: {left}"
        shutil.rmtree(base)


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is no ELF file"
    return int.from_bytes(header[18:20], "little")


@pytest.mark.parametrize("arch", ARCHES)
def test_installed_for_its_machine(installed: dict[str, Installed], arch: str) -> None:
    """The package is installed, its user made, and the agent's core is the machine's: the
    arm64 run really ran aarch64 code."""
    root = installed[arch].root
    status = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
         "-f", "${db:Status-Status} ${Architecture}", PACKAGE],
        capture_output=True, text=True, check=True).stdout
    assert status == f"installed {arch}"
    passwd = (root / "etc/passwd").read_text()
    assert re.search(rf"^{PACKAGE}:", passwd, re.MULTILINE), "postinst made no service user"
    machine = _checked(in_root(root, "python3", "-c", "import os; print(os.uname().machine)"),
                       "uname")
    assert machine.decode().strip() == MACHINE[arch]
    cores = list((root / "usr/lib" / PACKAGE).rglob("_core*.so"))
    assert len(cores) == 1, cores
    assert _elf_machine(cores[0]) == ELF_MACHINE[arch]


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_parse_audit(installed: dict[str, Installed], log: str) -> None:
    """parse-audit on each arch prints the events recorded with the log, byte for byte."""
    expected = (FIXTURES / log.replace(".log", ".events.jsonl")).read_bytes()
    for arch in ARCHES:
        assert installed[arch].out[log] == expected, f"{arch}: parse-audit {log} differs"


def _events(out: bytes) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in out.splitlines()]
    assert events, "no events"
    return events


def _packages(root: Path) -> list[tuple[str, str, str]]:
    listed = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
         "-f", "${db:Status-Status} ${Package} ${Version} ${Architecture}\n"],
        capture_output=True, text=True, check=True).stdout
    return [(name, ver, arch) for status, name, ver, arch in map(str.split, listed.splitlines())
            if status == "installed"]


def _normalised(events: list[dict[str, Any]], arch: str) -> list[dict[str, Any]]:
    """What legitimately differs between the two root file systems, made equal:
    - ts: when the command ran;
    - a package's arch when it is the machine's (amd64 or arm64; "all" stays), and a binNMU
      suffix of its version ("+b1": Debian rebuilt it on some architectures only);
    - a user's pwchanged: the day its account was made (the root file system's build, the
      package's install), which need not be the same day for the two;
    - the number of files BL-FILE-005 looked at: util-linux names two of its setarch links
      after the machine (/usr/bin/i386 and /usr/bin/x86_64 on amd64 only; arm64 has none),
      counted again through /bin -> usr/bin."""
    out = []
    for event in events:
        event = {k: v for k, v in event.items() if k != "ts"}
        if event.get("t") == "pkg":
            if event.get("arch") == arch:
                event["arch"] = "<machine>"
            event["ver"] = re.sub(r"\+b[0-9]+$", "", event["ver"])
        if event.get("t") == "user":
            event.pop("pwchanged", None)
        if event.get("id") == "BL-FILE-005" and event["res"] == "Pass":
            event["why"], count = re.subn(r"^no world-writable file among [1-9][0-9]* in ",
                                          "no world-writable file among <N> in ", event["why"])
            assert count == 1, event["why"]
        out.append(event)
    return out


def _first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"event {index}:\n  amd64: {x}\n  arm64: {y}"
    return f"{len(a)} events on amd64, {len(b)} on arm64"


@pytest.mark.parametrize("name", COLLECTED)
def test_collect_same_on_both(installed: dict[str, Installed], name: str) -> None:
    """collect gives the same events on arm64 as on amd64, up to what _normalised lists."""
    amd64, arm64 = (_normalised(_events(installed[a].out[name]), a) for a in ARCHES)
    assert amd64 == arm64, _first_difference(amd64, arm64)


@pytest.mark.parametrize("arch", ARCHES)
def test_sbom_is_dpkg_database(installed: dict[str, Installed], arch: str) -> None:
    """SBoM lists what dpkg-query, run on the host over the root file system's database, says
    is installed: the package itself included, versions and architectures as they are."""
    events = _events(installed[arch].out["SBoM"])
    listed = [(e["name"], e["ver"], e.get("arch", "")) for e in events if e["mgr"] == "dpkg"]
    assert listed == _packages(installed[arch].root)
    assert (PACKAGE, arch) in {(e["name"], e.get("arch")) for e in events}


@pytest.mark.parametrize("arch", ARCHES)
def test_local_users_has_service_user(installed: dict[str, Installed], arch: str) -> None:
    """LocalUsers reads the root file system's accounts: the service user postinst made, with
    no login, and root's password state from /etc/shadow."""
    users = {e["name"]: e for e in _events(installed[arch].out["LocalUsers"]) if e["t"] == "user"}
    passwd_names = [line.split(":")[0]
                    for line in (installed[arch].root / "etc/passwd").read_text().splitlines()]
    assert list(users) == passwd_names
    assert users[PACKAGE]["login"] is False
    assert users["root"]["pw"] == "disabled"  # mmdebstrap leaves root's password "*"


# What does not change while a process runs (state, threads and rss may).
PROCESS_FIXED = ("pid", "ppid", "uid", "euid", "gid", "egid", "comm", "exe", "argv", "start")


def test_process_snapshot_sees_this_test(installed: dict[str, Installed]) -> None:
    """collect Process, the core's /proc scanner (arm64: parsing under emulation), finds this
    test's own process in both trees (one /proc, one kernel) with the same fields, as this
    process knows them itself."""
    me = os.getpid()
    with open("/proc/self/cmdline", "rb") as cmdline:
        argv = [a.decode() for a in cmdline.read().split(b"\0")[:-1]]
    seen = {}
    for arch in ARCHES:
        mine = [e for e in _events(installed[arch].out["Process"])
                if e["t"] == "process" and e["pid"] == me]
        assert len(mine) == 1, f"{arch}: {len(mine)} process events for pid {me}"
        seen[arch] = {k: mine[0].get(k) for k in PROCESS_FIXED}
    assert seen["arm64"] == seen["amd64"]
    assert (seen["amd64"]["ppid"], seen["amd64"]["uid"], seen["amd64"]["argv"]) == (
        os.getppid(), os.getuid(), argv)
