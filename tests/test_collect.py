"""`micro-agent collect NAME`: one snapshot of each collector the inventory issue names, as
JSON lines, checked against the system's own tools (or a prepared tree, through the hidden
--root option the collectors read files under)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_unless_ci
from test_utmp import BOOT_TIME, DEAD_PROCESS, USER_PROCESS, rec

AGENT = [sys.executable, "-m", "agent.cli"]


def collect(name: str, *extra: str, prefix: list[str] | None = None) -> list[dict[str, Any]]:
    run = subprocess.run([*(prefix or []), *AGENT, "collect", name, "--config", "/nonexistent.json",
                          *extra], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_sbom_equals_dpkg_query() -> None:
    events = collect("SBoM")
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${binary:Package} ${Version}\\n"],
                         capture_output=True, text=True, check=True).stdout
    installed = {tuple(line.split(" ")[1:]) for line in out.splitlines() if line.startswith("installed ")}
    names = {(e["name"], e["ver"]) for e in events if e.get("mgr") == "dpkg"}
    # dpkg-query names Multi-Arch: same packages name:arch; the events keep the arch apart.
    plain = {(n.split(":")[0], v) for n, v in installed}
    assert {(n.split(":")[0], v) for n, v in names} == plain and len(names) == len(installed)


def test_local_users_equal_getent() -> None:
    events = collect("LocalUsers")
    getent = subprocess.run(["getent", "passwd"], capture_output=True, text=True, check=True).stdout
    assert {e["name"] for e in events if e["t"] == "user"} == {l.split(":")[0] for l in getent.splitlines()}
    groups = subprocess.run(["getent", "group"], capture_output=True, text=True, check=True).stdout
    assert {e["name"] for e in events if e["t"] == "group"} == {l.split(":")[0] for l in groups.splitlines()}


def test_listening_ports_include_a_listener_of_ours() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        events = collect("ListeningPorts")
    mine = [e for e in events if e["lport"] == port]
    assert len(mine) == 1 and mine[0]["proto"] == "tcp" and mine[0]["laddr"] == "127.0.0.1"


def test_process_snapshot_has_a_child_of_ours() -> None:
    """`collect Process`: the /proc scanner's snapshot, one `process` event per process (the
    one producer of that event)."""
    token = f"collect-{uuid.uuid4().hex}"
    argv = [sys.executable, "-c", "import time; time.sleep(60)", token]
    child = subprocess.Popen(argv)
    try:
        events = collect("Process")
    finally:
        child.kill()
        child.wait()
    assert events and all(e["t"] == "process" for e in events)
    pids = [e["pid"] for e in events]
    assert len(pids) == len(set(pids)) and os.getpid() in pids
    (mine,) = [e for e in events if e["pid"] == child.pid]
    assert mine["argv"] == argv and mine["ppid"] == os.getpid()


def test_system_information_and_heartbeat() -> None:
    events = collect("SystemInformation")
    (info,) = [e for e in events if e["t"] == "sysinfo"]
    assert info["t"] == "sysinfo" and info["os"]
    links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True,
                                      check=True).stdout)
    assert {e["name"] for e in events if e["t"] == "netif"} == {link["ifname"] for link in links}
    (beat,) = collect("Heartbeat")
    assert beat["t"] == "heartbeat"


def test_baseline_has_at_least_30_checks_with_results() -> None:
    events = collect("Baseline")
    assert len(events) >= 30
    assert {e["res"] for e in events} <= {"Pass", "Fail", "Skip", "Error"}
    assert len({e["id"] for e in events}) == len(events)


def test_login_reads_the_history_of_a_prepared_tree(tmp_path: Path) -> None:
    log = tmp_path / "var" / "log"
    log.mkdir(parents=True)
    (log / "wtmp").write_bytes(
        rec(BOOT_TIME, user=b"reboot", line=b"~", sec=1_700_000_000)
        + rec(USER_PROCESS, pid=42, line=b"pts/0", ut_id=b"ts/0", user=b"alice",
              host=b"192.0.2.7", sec=1_700_000_100, addr=bytes([192, 0, 2, 7]))
        + rec(DEAD_PROCESS, pid=42, line=b"pts/0", ut_id=b"ts/0", sec=1_700_000_400))
    (log / "btmp").write_bytes(rec(USER_PROCESS, pid=77, line=b"ssh:notty", user=b"mallory",
                                   host=b"198.51.100.9", sec=1_700_000_200))
    events = collect("Login", "--root", str(tmp_path))
    assert [(e["op"], e.get("user")) for e in events] == [
        ("boot", None), ("login", "alice"), ("logout", "alice"), ("failed", "mallory")]
    login = events[1]
    assert (login["tty"], login["host"], login["addr"], login["pid"]) == ("pts/0", "192.0.2.7", "192.0.2.7", 42)
    assert events[2]["dur"] == 300_000 and events[3]["host"] == "198.51.100.9"


@pytest.mark.live
@pytest.mark.root
def test_firewall_in_a_fresh_namespace() -> None:
    if shutil.which("nft") is None:
        skip_unless_ci("nft is not installed (Debian package nftables)")
    ns = f"amcollect{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True, input=(
            "table inet t {\n chain input {\n  type filter hook input priority 0; policy drop;\n"
            "  tcp dport 22 accept\n  ip6 saddr fd00::/8 udp dport 53 drop\n }\n}\n"))
        events = collect("Firewall", prefix=["ip", "netns", "exec", ns])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    rules = [e for e in events if e["t"] == "fwrule"]
    chains = [e for e in events if e["t"] == "fwchain"]
    assert len(rules) == 2 and len(chains) == 1
    assert (chains[0]["table"], chains[0]["hook"], chains[0]["policy"]) == ("t", "input", "drop")
    ssh, dns = sorted(rules, key=lambda r: r["pos"])
    assert (ssh["proto"], ssh["dport"], ssh["action"]) == (["tcp"], ["22"], "allow")
    assert (dns["fam"], dns["saddr"], dns["dport"], dns["action"]) == ("inet6", ["fd00::/8"], ["53"], "deny")


def test_an_unknown_name_is_refused() -> None:
    run = subprocess.run([*AGENT, "collect", "Nope"], check=False, capture_output=True, text=True)
    assert run.returncode == 2 and "is not one of" in run.stderr
