"""Baseline: prepared trees with known good and bad settings give the expected result for
every check; disabling a group or a check removes it; what cannot be read is an Error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.inventory import baseline
from agent.inventory.baseline_checks import CHECKS

GOOD_SYSCTL = {
    "net/ipv4/ip_forward": "0",
    "net/ipv4/conf/all/accept_redirects": "0",
    "net/ipv4/conf/default/accept_redirects": "0",
    "net/ipv6/conf/all/accept_redirects": "0",
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/all/accept_source_route": "0",
    "net/ipv4/icmp_echo_ignore_broadcasts": "1",
    "net/ipv4/tcp_syncookies": "1",
    "net/ipv4/conf/all/rp_filter": "1",
    "net/ipv4/conf/all/log_martians": "1",
    "net/ipv4/icmp_ignore_bogus_error_responses": "1",
    "kernel/randomize_va_space": "2",
    "kernel/dmesg_restrict": "1",
    "fs/protected_symlinks": "1",
    "fs/protected_hardlinks": "1",
    "fs/suid_dumpable": "0",
}
BAD_SYSCTL = {
    "net/ipv4/ip_forward": "1",
    "net/ipv4/conf/all/accept_redirects": "1",
    "net/ipv4/conf/default/accept_redirects": "1",
    "net/ipv6/conf/all/accept_redirects": "1",
    "net/ipv4/conf/all/send_redirects": "1",
    "net/ipv4/conf/all/accept_source_route": "1",
    "net/ipv4/icmp_echo_ignore_broadcasts": "0",
    "net/ipv4/tcp_syncookies": "0",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/all/log_martians": "0",
    "net/ipv4/icmp_ignore_bogus_error_responses": "0",
    "kernel/randomize_va_space": "1",
    "kernel/dmesg_restrict": "0",
    "fs/protected_symlinks": "0",
    "fs/protected_hardlinks": "0",
    "fs/suid_dumpable": "2",
}

HASH = "$6$saltsalt$" + "A" * 86

GOOD_FILES = {
    "etc/passwd": (("root:x:0:0:root:/root:/bin/sh\n"
                   "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                   "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"), 0o644),
    "etc/shadow": ((f"root:{HASH}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
                   f"alice:!{HASH}:19000:1:365:7:::\n"), 0o640),
    "etc/group": "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nalice:x:1000:\n",
    "etc/gshadow": ("root:*::\ndaemon:*::\nshadow:*::\nalice:!::\n", 0o640),
    "etc/crontab": ("# m h dom mon dow user command\n", 0o600),
    "etc/ssh/sshd_config": (("# hardened\nInclude /etc/ssh/sshd_config.d/*.conf\n"
                            "PermitRootLogin no\nPasswordAuthentication no\n"
                            "Match User alice\n    PasswordAuthentication yes\n"), 0o600),
    # Settings of an included file count where the Include stands, before the main file's.
    "etc/ssh/sshd_config.d/10-site.conf": (
        ("Protocol 2\nPermitEmptyPasswords no\nHostbasedAuthentication no\nIgnoreRhosts yes\n"
        "MaxAuthTries 3\nX11Forwarding no\nPermitUserEnvironment no\nLoginGraceTime 1m\n"),
        0o600),
    "etc/security/limits.conf": "# limits\n*    hard    core    0\n",
    "etc/login.defs": "PASS_MAX_DAYS 90\nPASS_MIN_DAYS 1\nPASS_WARN_AGE 14\nUMASK 027\n",
    "usr/bin/tool": ("#!/bin/sh\n", 0o755),
    "etc/hosts": ("127.0.0.1 localhost\n", 0o644),
}

BAD_FILES = {
    "etc/passwd": (("root:x:0:1:root:/root:/bin/sh\n"
                   "toor:x:0:0:backdoor:/root:/bin/sh\n"
                   "guest::1001:1001::/home/guest:/bin/sh\n"
                   "guest:x:1002:1001::/home/guest2:/bin/sh\n"
                   f"old:{HASH}:1001:4242::/home/old:/bin/sh\n"
                   "+::::::\n"), 0o666),
    "etc/shadow": ((f"root:{HASH}:19000:0:99999:7:::\ntoor::19000:0:99999:7:::\n"
                   "guest::19000:0:99999:7:::\n"), 0o644),
    "etc/group": ("root:x:0:\ndaemon:x:1:\nguest:x:1001:\nguest:x:1002:\nstaff:x:1002:\n",
                  0o666),
    "etc/gshadow": ("root:*::\n", 0o644),
    "etc/crontab": ("# m h dom mon dow user command\n", 0o644),
    "etc/ssh/sshd_config": (("PermitRootLogin yes\nPasswordAuthentication yes\nProtocol 2,1\n"
                            "PermitEmptyPasswords yes\nHostbasedAuthentication yes\n"
                            "IgnoreRhosts no\nMaxAuthTries 10\nX11Forwarding yes\n"
                            "PermitUserEnvironment yes\nLoginGraceTime 0\n"), 0o644),
    "etc/security/limits.conf": "# no core limit\n*    soft    core    0\n",
    "etc/login.defs": "PASS_MAX_DAYS 99999\nPASS_MIN_DAYS 0\nPASS_WARN_AGE 3\nUMASK 022\n",
    "usr/bin/tool": ("#!/bin/sh\n", 0o777),
    "etc/hosts": ("127.0.0.1 localhost\n", 0o646),
}


def _write(root: Path, files: dict[str, object], sysctl: dict[str, str], tmp_mode: int) -> None:
    for rel, spec in files.items():
        text, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(text))
        os.chmod(path, int(mode))  # type: ignore[call-overload]
    for rel, value in sysctl.items():
        path = root / "proc/sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    for rel in ("tmp", "var/tmp"):
        (root / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(root / rel, tmp_mode)


@pytest.fixture()
def good_tree(tmp_path: Path) -> Path:
    root = tmp_path / "good"
    _write(root, GOOD_FILES, GOOD_SYSCTL, 0o1777)
    os.chown(root / "etc/shadow", 0, 42)  # root:shadow, as Debian has it
    return root


@pytest.fixture()
def bad_tree(tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    _write(root, BAD_FILES, BAD_SYSCTL, 0o777)
    os.chown(root / "etc/ssh/sshd_config", 1000, 1000)
    return root


def _results(root: Path, **kwargs: object) -> dict[str, dict[str, object]]:
    snap = baseline.gather(root, **kwargs)  # type: ignore[arg-type]
    assert not snap.errors
    return {str(e["id"]): e for e in snap.events}


def test_at_least_30_checks_with_unique_ids_and_documented() -> None:
    ids = [c.id for c in CHECKS]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "inventory.md").read_text()
    for check in CHECKS:
        assert check.sev in ("Critical", "Important", "Warning", "Informational")
        assert check.desc and check.fix and check.group
        assert f"`{check.id}`" in doc, f"{check.id} is not in docs/inventory.md"


@pytest.mark.root
def test_good_tree_passes_every_check(good_tree: Path) -> None:
    results = _results(good_tree)
    assert set(results) == {c.id for c in CHECKS}
    failed = {i: (e["res"], e["why"]) for i, e in results.items() if e["res"] != "Pass"}
    assert failed == {}
    for event in results.values():
        assert event["t"] == "baseline" and event["src"] == "baseline"
        assert isinstance(event["ts"], int) and event["ts"] > 0


@pytest.mark.root
def test_bad_tree_fails_every_check(bad_tree: Path) -> None:
    results = _results(bad_tree)
    passed = {i: (e["res"], e["why"]) for i, e in results.items() if e["res"] != "Fail"}
    assert passed == {}
    # The reasons name what is wrong.
    assert "toor" in str(results["BL-ACC-002"]["why"])
    assert "guest" in str(results["BL-ACC-001"]["why"])
    assert "/usr/bin/tool" in str(results["BL-FILE-005"]["why"])
    assert "/etc/hosts" in str(results["BL-FILE-005"]["why"])
    assert "PermitRootLogin yes" in str(results["BL-SSH-002"]["why"])
    # No event carries a password hash, whatever the check read.
    assert HASH not in repr(results)


@pytest.mark.root
def test_sshd_defaults_and_missing_sshd(good_tree: Path) -> None:
    (good_tree / "etc/ssh/sshd_config").write_text("# all defaults\n")
    results = _results(good_tree)
    # OpenSSH's defaults: prohibit-password, password auth on, 6 tries, 120 s grace.
    for check in ("BL-SSH-002", "BL-SSH-003", "BL-SSH-008", "BL-SSH-011"):
        assert results[check]["res"] == "Fail", results[check]
        assert "(the default)" in str(results[check]["why"])
    for check in ("BL-SSH-004", "BL-SSH-005", "BL-SSH-006", "BL-SSH-007", "BL-SSH-009",
                  "BL-SSH-010"):
        assert results[check]["res"] == "Pass", results[check]
    for rel in ("etc/ssh/sshd_config", "etc/ssh/sshd_config.d/10-site.conf"):
        (good_tree / rel).unlink()
    results = _results(good_tree)
    ssh = [e for e in results.values() if e["group"] == "SSH"]
    assert ssh and all(e["res"] == "Skip" for e in ssh)


@pytest.mark.root
def test_not_applicable_and_unreadable(good_tree: Path) -> None:
    (good_tree / "proc/sys/net/ipv6/conf/all/accept_redirects").unlink()
    (good_tree / "etc/login.defs").unlink()
    (good_tree / "etc/shadow").unlink()
    (good_tree / "etc/shadow").mkdir()  # reading it fails with EISDIR
    (good_tree / "etc/passwd").write_text("root:x:0:0:root\n")  # 5 fields
    results = _results(good_tree)
    assert results["BL-NET-004"]["res"] == "Skip"
    assert all(results[f"BL-PWD-00{i}"]["res"] == "Skip" for i in range(1, 5))
    assert results["BL-ACC-003"]["res"] == "Error"
    assert "/etc/shadow: Is a directory" in str(results["BL-ACC-003"]["why"])
    for check in ("BL-ACC-001", "BL-ACC-002", "BL-ACC-005", "BL-ACC-006", "BL-ACC-009", "BL-ACC-010"):
        assert results[check]["res"] == "Error", results[check]
        assert "fields" in str(results[check]["why"])


@pytest.mark.root
def test_disabling_a_group_or_a_check_removes_it(good_tree: Path) -> None:
    everything = _results(good_tree)
    without_ssh = _results(good_tree, groups_disabled={"ssh"}, checks_disabled={"BL-NET-001"})
    removed = set(everything) - set(without_ssh)
    expected = {c.id for c in CHECKS if c.group == "SSH"} | {"BL-NET-001"}
    assert removed == expected
    assert set(without_ssh) <= set(everything)
    snap = baseline.gather(good_tree, groups_disabled=["NoSuchGroup"],
                           checks_disabled=["BL-XXX-999"])
    assert len(snap.events) == len(CHECKS)
    assert len(snap.errors) == 2


def test_live_system_gives_a_result_for_every_check() -> None:
    snap = baseline.gather()
    assert [e["id"] for e in snap.events] == [c.id for c in CHECKS]
    for event in snap.events:
        assert event["res"] in ("Pass", "Fail", "Skip", "Error")
        assert event["why"]
    # This machine's kernel has /proc/sys: the sysctl checks decide.
    sysctl = [e for e in snap.events if e["group"] in ("Kernel", "CoreDumps")
              and str(e["id"]).startswith(("BL-KRN", "BL-CORE-001"))]
    assert all(e["res"] in ("Pass", "Fail") for e in sysctl)
