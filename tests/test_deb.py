"""The Debian packages (scripts/build-deb, docs/packaging.md): the three built once, their
control data, files and the machine of their C core; a second build byte-identical; the
amd64 one installed on this machine with dpkg, run (parse-audit on the fixture, collect, a
short `micro-agent run` as the service user with the unit's capabilities), then purged:
nothing of it left and the kernel's audit status and rules as they were before the install.

The install test changes the machine (a package, a system user, the kernel audit while the
agent runs): run it as root with nothing else using the kernel's audit,
    python3 -m pytest tests/test_deb.py
It purges the package and stops the agent even when it fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_unless_ci

from agent.config import Config, ConfigStore

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARCHES = ("amd64", "arm64", "armhf")
PACKAGE = "iot-micro-agent"
USER = "iot-micro-agent"
PREFIX = "usr/lib/iot-micro-agent"
SITE = f"{PREFIX}/lib/python3.11/site-packages"
# e_machine of the ELF header, per Debian architecture, and its class (64 or 32 bits).
ELF_MACHINE = {"amd64": (62, 2), "arm64": (183, 2), "armhf": (40, 1)}
FIXTURE = ROOT / "tests" / "fixtures" / "audit" / "device-raw.log"
FIXTURE_EVENTS = ROOT / "tests" / "fixtures" / "audit" / "device-raw.events.jsonl"
UNIT = ROOT / "packaging" / "iot-micro-agent.service"
# Where an installed package puts or leaves anything (purge must leave none of these).
INSTALLED_PATHS = (
    "/usr/lib/iot-micro-agent", "/usr/bin/micro-agent", "/etc/iot-micro-agent",
    "/lib/systemd/system/iot-micro-agent.service", "/usr/share/doc/iot-micro-agent",
    "/var/lib/iot-micro-agent", "/run/iot-micro-agent",
    "/etc/systemd/system/multi-user.target.wants/iot-micro-agent.service",
    "/etc/systemd/system/iot-micro-agent.service",
)


def version() -> str:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def build(out: Path, *arches: str) -> dict[str, Path]:
    for tool, package in (("dpkg-deb", "dpkg"), ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
                          ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
                          ("apt-get", "apt")):
        if shutil.which(tool) is None:
            skip_unless_ci(f"{tool} is not installed ({package})")
    # This interpreter: it has cffi and is Python 3.11, as the build needs.
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build-deb"), "--out",
                           str(out), *arches], check=False, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {arch: out / f"{PACKAGE}_{version()}_{arch}.deb" for arch in arches}


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("debs"), *ARCHES)


def control(deb: Path) -> dict[str, str]:
    text = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                          text=True).stdout
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line[:1] not in (" ", "\t") and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The data archive's members by path (without the leading ./)."""
    fsys = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                          capture_output=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(fsys)) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


def elf_machine(data: bytes) -> tuple[int, int]:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    little = data[5] == 1
    return int.from_bytes(data[18:20], "little" if little else "big"), data[4]


@pytest.mark.parametrize("arch", ARCHES)
def test_package_holds_the_agent_for_its_machine(debs: dict[str, Path], arch: str,
                                                 tmp_path: Path) -> None:
    deb = debs[arch]
    fields = control(deb)
    assert fields["Package"] == PACKAGE
    assert fields["Version"] == version()
    assert fields["Architecture"] == arch
    depends = fields["Depends"]
    for dep in ("python3 (>= 3.11)", "python3 (<< 3.12)", "python3-cffi-backend",
                "python3-msgpack", "python3-paho-mqtt", "python3-socks", "adduser"):
        assert dep in depends, depends
    # SystemInformation reads rtnetlink itself (agent.interface_addresses); the uplink speaks
    # IoT Hub's MQTT itself (agent.uplink.mqtt): nothing of the SDK's or requests' is needed.
    for dep in ("pyroute2", "deprecation", "janus", "typing-extensions", "idna",
                "charset-normalizer", "certifi", "requests", "urllib3"):
        assert dep not in depends, depends
    assert re.search(r"libc6 \(>= 2\.\d+\)", depends), depends

    files = members(deb)
    for path, mode in ((f"{SITE}/agent/cli.py", 0o644),
                       (f"{SITE}/agent/__pycache__/cli.cpython-311.pyc", 0o644),
                       (f"{SITE}/agent/_core.abi3.so", 0o644),
                       (f"{SITE}/agent/uplink/mqtt.py", 0o644),
                       (f"{SITE}/debian-dist-packages.pth", 0o644),
                       (f"{PREFIX}/pyvenv.cfg", 0o644),
                       ("usr/bin/micro-agent", 0o755),
                       ("lib/systemd/system/iot-micro-agent.service", 0o644),
                       ("etc/iot-micro-agent/config.json", 0o644),
                       ("usr/share/doc/iot-micro-agent/copyright", 0o644),
                       ("usr/share/doc/iot-micro-agent/operations.md", 0o644)):
        assert path in files, f"{deb.name} lacks /{path}"
        assert files[path].isfile() and files[path].mode == mode, (path, oct(files[path].mode))
    for gone in ("azure", "requests", "urllib3", "requests_unixsocket"):
        assert not any(n.startswith(f"{SITE}/{gone}/") for n in files), f"{deb.name} ships {gone}"
    python = files[f"{PREFIX}/bin/python3"]
    assert python.issym() and python.linkname == "../../../bin/python3"  # /usr/bin/python3
    assert all(m.uname == "root" and m.gname == "root" for m in files.values())
    # Installed-Size: what the files take, in KiB (each file rounded up).
    size_kib = sum((m.size + 1023) // 1024 if m.isfile() else 1 for n, m in files.items() if n)
    assert abs(int(fields["Installed-Size"]) - size_kib) <= 2, (fields["Installed-Size"], size_kib)

    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    core = (tmp_path / SITE / "agent" / "_core.abi3.so").read_bytes()
    assert elf_machine(core) == ELF_MACHINE[arch]
    orjson = sorted((tmp_path / SITE / "orjson").glob("*.so"))
    assert len(orjson) == 1 and elf_machine(orjson[0].read_bytes()) == ELF_MACHINE[arch]

    assert (tmp_path / "usr/share/doc/iot-micro-agent/copyright").read_bytes() == \
        (ROOT / "LICENSE").read_bytes()
    assert (tmp_path / "lib/systemd/system/iot-micro-agent.service").read_bytes() == \
        UNIT.read_bytes()
    assert (tmp_path / "usr/share/doc/iot-micro-agent/operations.md").read_bytes() == \
        (ROOT / "docs" / "operations.md").read_bytes()
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], check=True,
                               capture_output=True, text=True).stdout.split()
    assert conffiles == ["/etc/iot-micro-agent/config.json"]


def test_default_config_documents_every_property_at_its_default(debs: dict[str, Path],
                                                                tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(debs["amd64"]), str(tmp_path)], check=True)
    path = tmp_path / "etc/iot-micro-agent/config.json"
    doc = json.loads(path.read_text())
    store = ConfigStore(path)
    assert store.invalid_reasons == {}
    assert store.config == Config.defaults()
    twin = Config.defaults().to_twin()
    assert {k: v for k, v in doc.items() if not k.startswith("$")} == twin
    keys = list(doc)
    for name in twin:
        # Its documentation right before it, naming its range and default's kind.
        assert keys[keys.index(name) - 1] == "$" + name
        assert isinstance(doc["$" + name], str) and len(doc["$" + name]) > 20
    assert "$comment" in doc


def test_two_builds_are_identical(debs: dict[str, Path], tmp_path: Path) -> None:
    again = build(tmp_path, "amd64")["amd64"]
    assert again.read_bytes() == debs["amd64"].read_bytes()


# ---------------------------------------------------------------------------------------------
# Installed on this machine


def audit_state() -> tuple[dict[str, str], str]:
    status = subprocess.run(["auditctl", "-s"], check=True, capture_output=True,
                            text=True).stdout
    kept = ("enabled", "failure", "pid", "rate_limit", "backlog_limit", "backlog_wait_time")
    values = dict(line.split(" ", 1) for line in status.splitlines() if " " in line)
    rules = subprocess.run(["auditctl", "-l"], check=True, capture_output=True,
                           text=True).stdout
    return {k: values.get(k, "") for k in kept}, rules


def installed() -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", PACKAGE],
                          check=False, capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() not in ("", "not-installed")


def unit_capabilities() -> list[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("AmbientCapabilities="):
            return [cap.lower().removeprefix("cap_") for cap in line.split("=", 1)[1].split()]
    raise AssertionError("the unit has no AmbientCapabilities=")


def micro_agent(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/micro-agent", *args], check=False, capture_output=True,
                          text=True, timeout=timeout,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.fixture()
def install(debs: dict[str, Path]) -> Iterator[tuple[dict[str, str], str]]:
    """dpkg -i of the amd64 package, purged afterwards whatever happened; gives the kernel's
    audit status and rules from before the install."""
    if os.geteuid() != 0:
        skip_unless_ci("installing a package needs root")
    for tool in ("auditctl", "setpriv", "dpkg"):
        if shutil.which(tool) is None:
            skip_unless_ci(f"{tool} is not installed")
    if installed():
        pytest.fail(f"{PACKAGE} is installed already: the test would remove someone's copy")
    for path in INSTALLED_PATHS:
        assert not os.path.lexists(path), f"{path} exists before the install"
    before = audit_state()
    try:
        done = subprocess.run(["dpkg", "-i", str(debs["amd64"])], check=False, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (
            "dpkg -i failed (a Debian package of Depends missing? scripts/test's apt list "
            f"installs them):\n{done.stdout}\n{done.stderr}")
        yield before
    finally:
        if installed():
            subprocess.run(["dpkg", "--purge", PACKAGE], check=False, capture_output=True,
                           timeout=300)


@pytest.mark.root
@pytest.mark.live
def test_installed_package_runs_and_purges_clean(install: tuple[dict[str, str], str],
                                                  tmp_path: Path) -> None:
    before = install
    if Path("/run/systemd/system").is_dir():
        # systemd runs here: postinst started the service; it gives way to the run below.
        active = subprocess.run(["systemctl", "is-active", "iot-micro-agent.service"],
                                check=False, capture_output=True, text=True)
        assert active.stdout.strip() == "active"
        subprocess.run(["systemctl", "stop", "iot-micro-agent.service"], check=True,
                       timeout=120)

    # The service user: a system account without a login shell.
    passwd = subprocess.run(["getent", "passwd", USER], check=False, capture_output=True, text=True)
    assert passwd.returncode == 0, "postinst made no user"
    _name, _, uid, gid, _, _home, shell = passwd.stdout.strip().split(":")
    assert int(uid) < 1000 and shell in ("/usr/sbin/nologin", "/bin/false")
    data = Path("/var/lib/iot-micro-agent")
    st = data.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (int(uid), int(gid), 0o700)

    # The command on PATH, from the package.
    done = micro_agent("parse-audit", str(FIXTURE))
    assert done.returncode == 0, done.stderr
    assert done.stdout == FIXTURE_EVENTS.read_text()
    done = micro_agent("collect", "Heartbeat", "--data-dir", str(tmp_path / "collect"))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["t"] for e in events] == ["heartbeat"] and events[0]["ver"] == version()
    # The IoT Hub uplink imports with Debian's paho-mqtt and PySocks (the local default above
    # never loads it).
    done = subprocess.run([f"/{PREFIX}/bin/python3", "-c",
                           "import agent.uplink.iothub, agent.uplink.mqtt, socks"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    # The service as the unit runs it: its user, its capabilities, no new privileges, the
    # data and runtime directories systemd would give it.
    runtime = Path("/run/iot-micro-agent")
    runtime.mkdir(mode=0o755, exist_ok=True)
    os.chown(runtime, int(uid), int(gid))
    caps = ",".join("+" + cap for cap in unit_capabilities())
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
             f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
             f"--bounding-set=-all,{caps}", "--no-new-privs", "--",
             "/usr/bin/micro-agent", "run"],
            stdout=out, stderr=subprocess.STDOUT, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "STATE_DIRECTORY": str(data),
                 "RUNTIME_DIRECTORY": str(runtime)})
    try:
        doc: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None:
            status = micro_agent("status", "--json")
            if status.returncode == 0:
                doc = json.loads(status.stdout)
                collectors = doc.get("collectors", {})
                assert isinstance(collectors, dict)
                if collectors.get("Process", {}).get("state") == "running":
                    break
            time.sleep(0.5)
        assert agent.poll() is None, log.read_text()[-3000:]
        assert doc.get("running") is True, (doc, log.read_text()[-3000:])
        # What runs is the installed copy: its interpreter, its core.
        maps = Path(f"/proc/{doc['pid']}/maps").read_text()
        assert f"/{SITE}/agent/_core.abi3.so" in maps
        assert os.readlink(f"/proc/{doc['pid']}/exe") == os.path.realpath("/usr/bin/python3")
        cmdline = Path(f"/proc/{doc['pid']}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0] == b"/usr/lib/iot-micro-agent/bin/python3"
        modules = micro_agent("status", "--modules").stdout.split()
        # msgpack from Debian's python3-msgpack; orjson is loaded only by the JSON upload
        # format, which the local default does not use.
        assert "agent" in modules and "msgpack" in modules and "orjson" not in modules
        collectors = doc["collectors"]
        assert isinstance(collectors, dict)
        states = {name: c["state"] for name, c in collectors.items()}
        for name in ("Process", "NetworkActivity", "Heartbeat", "LocalUsers"):
            assert states[name] == "running", (name, doc["collectors"])
        assert (runtime / "status.json").exists()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    done = subprocess.run(["dpkg", "--purge", PACKAGE], check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not installed()
    left = [path for path in INSTALLED_PATHS if os.path.lexists(path)]
    assert left == []
    helper_state = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    if helper_state.exists():
        assert not [p for p in helper_state.rglob("*iot-micro-agent*")]
    # Debian's policy: the system user stays.
    kept = subprocess.run(["getent", "passwd", USER], check=False, capture_output=True)
    assert kept.returncode == 0
    # The agent gave the kernel's audit back as it found it.
    assert audit_state() == before
