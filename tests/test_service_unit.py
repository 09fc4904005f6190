"""packaging/iot-micro-agent.service: `systemd-analyze verify` finds nothing to say, `systemd-
analyze security --offline=yes` rates it 2.5 or lower, its capabilities are the ones
docs/operations.md accounts for, and what the agent does fits the unit's sandbox: every system
call and socket family the agent and its child make (traced with strace over `micro-agent run`
and `micro-agent collect` of every collector it takes) passes the unit's SystemCallFilter= and
RestrictAddressFamilies=, no mapping is ever writable and executable (MemoryDenyWriteExecute=),
and the agent runs under the kernel's own W^X (prctl PR_SET_MDWE).

verify needs the ExecStart= binary to exist: the test checks a copy of the unit whose only
difference is ExecStart= naming this environment's console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "packaging" / "iot-micro-agent.service"
OPERATIONS = REPO / "docs" / "operations.md"
MAX_EXPOSURE = 2.5
NO_KERNEL = {name + "_Disabled": True for name in (
    "Process", "NetworkActivity", "Login", "ListeningPorts", "Firewall", "SystemInformation",
    "SBoM", "Baseline")}
COLLECTABLE = ("SystemInformation", "LocalUsers", "Firewall", "SBoM", "Baseline",
               "ListeningPorts", "Login", "Process", "Heartbeat")

# In CI (scripts/test installs systemd and strace) a missing tool fails the test, never skips.
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None
                                   and not os.environ.get("CI"),
                                   reason="systemd-analyze is not installed (scripts/test installs systemd)")


def settings(name: str) -> list[str]:
    """Every value of a [Service] setting of the unit, in order."""
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
            if line.startswith(name + "=")]


def console_script() -> Path:
    return Path(sysconfig.get_path("scripts")) / "micro-agent"


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart= and ExecStopPost= naming this environment's micro-agent,
    nothing else changed."""
    text = UNIT.read_text()
    commands = {"ExecStart": "/usr/bin/micro-agent run",
                "ExecStopPost": "/usr/bin/micro-agent audit-restore"}
    for name, command in commands.items():
        assert settings(name) == [command], settings(name)
    assert console_script().exists(), console_script()
    copy = tmp_path / UNIT.name
    local = text
    for name in commands:
        local = local.replace(f"{name}=/usr/bin/micro-agent ", f"{name}={console_script()} ")
    copy.write_text(local)
    changed = [(a, b) for a, b in zip(text.splitlines(), copy.read_text().splitlines()) if a != b]
    assert [a for a, _ in changed] == [f"{name}={command}" for name, command in commands.items()]
    return copy


@needs_systemd
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = unit_for_this_machine(tmp_path)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=120, check=False, cwd=tmp_path)
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    # And verify does look: the unit as shipped names a binary this machine does not have.
    if not Path("/usr/bin/micro-agent").exists():
        shipped = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                                 text=True, timeout=120, check=False, cwd=tmp_path)
        assert shipped.returncode != 0 and "/usr/bin/micro-agent" in shipped.stderr


@needs_systemd
def test_exposure_score_is_at_most_2_5(tmp_path: Path) -> None:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                         capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    found = re.search(r"Overall exposure level for iot-micro-agent\.service: (\d+\.\d+)",
                      out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, out.stdout


def test_the_capabilities_are_the_documented_ones() -> None:
    ambient = settings("AmbientCapabilities")
    bounding = settings("CapabilityBoundingSet")
    assert len(ambient) == 1 and ambient == bounding
    caps = set(ambient[0].split())
    assert caps <= {"CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_NET_ADMIN", "CAP_SYS_PTRACE",
                    "CAP_DAC_READ_SEARCH", "CAP_NET_RAW"}
    # docs/operations.md has one row per capability: `| CAP_X | collectors | why |`.
    rows = {m.group(1) for m in re.finditer(r"^\| `(CAP_[A-Z_]+)` \|", OPERATIONS.read_text(),
                                            re.MULTILINE)}
    assert rows == caps
    for name in ("NoNewPrivileges", "ProtectSystem", "MemoryDenyWriteExecute"):
        assert settings(name) in (["yes"], ["strict"]), name
    assert settings("ProtectProc") == ["default"]  # every process stays visible
    assert settings("Type") == ["notify"] and settings("NotifyAccess") == ["main"]


# --- what the agent does fits the sandbox ------------------------------------------------------


def syscall_groups() -> dict[str, list[str]]:
    """systemd's syscall groups as this systemd lists them: group -> members (names or
    @groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        word = line.strip()
        if line.startswith("@"):
            current = word.split()[0]
            groups[current] = []
        elif current and word and not word.startswith("#"):
            groups[current].append(word)
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def allowed_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow: the allow list, less every `~` line."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in settings("SystemCallFilter"):
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return allowed


TRACE_CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]")
SOCKET_FAMILY = re.compile(r"\b(?:socket|socketpair)\((AF_[A-Z0-9]+)")


def traced(tmp_path: Path, name: str, argv: list[str], run_for: float | None = None) -> str:
    """strace -f of one agent command (and its children); its trace text."""
    out = tmp_path / f"{name}.trace"
    cmd = ["strace", "-f", "-qq", "-o", str(out), *argv]
    if run_for is None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                       check=True)
    else:  # `run`, stopped with SIGTERM to the agent (its pid from the status file)
        status = Path(argv[argv.index("--data-dir") + 1]) / "status.json"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not status.exists():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(run_for)
            os.kill(json.loads(status.read_text())["pid"], signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    return out.read_text(errors="replace")


@needs_systemd
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("strace") is None and not os.environ.get("CI"),
                    reason="strace is not installed (scripts/test installs it)")
def test_every_system_call_and_socket_family_passes_the_units_filters(tmp_path: Path) -> None:
    agent = str(console_script())
    data = tmp_path / "data"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**NO_KERNEL, "SystemInformation_Disabled": False,
                                  "Firewall_Disabled": False}))
    traces = [traced(tmp_path, "run", [agent, "run", "--data-dir", str(data), "--config",
                                       str(config)], run_for=6.0)]
    for name in COLLECTABLE:
        traces.append(traced(tmp_path, name, [agent, "collect", name, "--data-dir", str(data)]))
    fixture = REPO / "tests" / "fixtures" / "audit" / "device-raw.log"
    traces.append(traced(tmp_path, "parse", [agent, "parse-audit", str(fixture)]))
    calls: set[str] = set()
    families: set[str] = set()
    mappings: list[str] = []
    for text in traces:
        for line in text.splitlines():
            m = TRACE_CALL.match(line)
            if m:
                calls.add(m.group(1))
            families.update(SOCKET_FAMILY.findall(line))
            if re.search(r"\b(?:mmap|mprotect|pkey_mprotect|shmat)\(", line):
                mappings.append(line)
    assert {"execve", "socket", "sendto", "epoll_wait"} <= calls  # the trace saw the agent
    assert sorted(calls - allowed_syscalls()) == []
    assert families and families <= set(settings("RestrictAddressFamilies")[0].split())
    # MemoryDenyWriteExecute= refuses W+X mappings, making a mapping executable afterwards and
    # executable shared memory.
    assert mappings
    assert [m for m in mappings if "PROT_WRITE|PROT_EXEC" in m] == []
    assert [m for m in mappings if re.search(r"\b(?:pkey_)?mprotect\(.*PROT_EXEC", m)] == []
    assert [m for m in mappings if "shmat(" in m and "SHM_EXEC" in m] == []


# The kernel's W^X for a process and its children (Linux 6.3): PR_SET_MDWE with
# PR_MDWE_REFUSE_EXEC_GAIN. systemd 257 and later implement MemoryDenyWriteExecute= with it.
UNDER_MDWE = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("a writable and executable mapping was allowed")
os.execv(sys.argv[1], sys.argv[1:])
"""


def mdwe_supported() -> bool:
    # PR_GET_MDWE (66) answers -1 on a kernel without it.
    probe = subprocess.run([sys.executable, "-c",
                            "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))"],
                           capture_output=True, text=True, check=False)
    return probe.stdout.strip() not in ("", "-1")


@pytest.mark.timeout(180)
@pytest.mark.skipif(not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux < 6.3)")
def test_the_agent_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    agent = str(console_script())
    data = tmp_path / "data"
    fixture = REPO / "tests" / "fixtures" / "audit" / "device-raw.log"
    parsed = subprocess.run([sys.executable, "-c", UNDER_MDWE, agent, "parse-audit",
                             str(fixture)], capture_output=True, timeout=120, check=False)
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.count(b"\n") > 10
    # The whole loop with the collectors that need no kernel source, and SystemInformation's
    # rtnetlink dumps.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**NO_KERNEL, "SystemInformation_Disabled": False}))
    proc = subprocess.Popen([sys.executable, "-c", UNDER_MDWE, agent, "run", "--data-dir",
                             str(data), "--config", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while not (data / "status.json").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    status = json.loads((data / "status.json").read_text())
    states = {name: c["state"] for name, c in status["collectors"].items()}
    assert states["SystemInformation"] == states["LocalUsers"] == "running", states
    decoded = subprocess.run([agent, "decode", str(data / "delivered")], capture_output=True,
                             text=True, timeout=60, check=True)
    kinds = {json.loads(line)["t"] for line in decoded.stdout.splitlines()}
    assert {"sysinfo", "user", "heartbeat"} <= kinds, kinds
    assert os.path.isdir(data / "delivered")
