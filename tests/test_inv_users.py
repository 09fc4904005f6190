"""LocalUsers: equals `getent passwd` / `getent group`; no field of any event holds a hash
from /etc/shadow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgpack
import pytest

from agent.inventory import users
from agent.inventory.users import password_state


def _getent(db: str) -> list[list[str]]:
    out = subprocess.run(["getent", db], check=True, capture_output=True, text=True).stdout
    return [line.split(":") for line in out.splitlines()]


def _local_names(path: str) -> set[str]:
    return {line.split(":", 1)[0] for line in Path(path).read_text().splitlines()
            if line and not line.startswith(("#", "+", "-"))}


@pytest.mark.root
def test_users_equal_getent_passwd() -> None:
    snap = users.gather()
    assert snap.errors == []
    ours = {str(e["name"]): e for e in snap.events if e["t"] == "user"}
    # getent also asks the other nsswitch sources (systemd adds root and nobody when the files
    # lack them): compare the accounts the files hold, and all of them.
    local = _local_names("/etc/passwd")
    theirs = {row[0]: row for row in _getent("passwd") if row[0] in local}
    assert set(ours) == set(theirs) == local
    for name, (_, _, uid, gid, gecos, home, shell) in theirs.items():
        event = ours[name]
        assert (event["uid"], event["gid"], event["home"], event["shell"]) == (
            int(uid), int(gid), home, shell)
        assert event.get("gecos", "") == gecos
        assert event["login"] == (shell not in users.NOLOGIN_SHELLS)
        assert event["t"] == "user" and event["src"] == "users"


def test_groups_equal_getent_group() -> None:
    snap = users.gather()
    ours = {str(e["name"]): e for e in snap.events if e["t"] == "group"}
    local = _local_names("/etc/group")
    theirs = {row[0]: row for row in _getent("group") if row[0] in local}
    assert set(ours) == set(theirs) == local
    for name, (_, _, gid, members) in theirs.items():
        assert ours[name]["gid"] == int(gid)
        assert ours[name]["members"] == [m for m in members.split(",") if m]
    # Each user's groups: its primary group, then every group listing it, as `id -Gn` says.
    for event in snap.events:
        if event["t"] != "user":
            continue
        id_groups = subprocess.run(["id", "-Gn", str(event["name"])], check=True,
                                   capture_output=True, text=True).stdout.split()
        assert event["groups"] == id_groups


HASHES = {
    "alice": "$6$rounds=5000$saltsalt$" + "x" * 86,
    "bob": "$y$j9T$abcdefghijklmnop$" + "Q" * 43,
    "carol": "$1$abcd$efghijklmnopqrstuv",
}


def test_no_hash_leaves_the_gatherer(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
        "bob:x:1001:1001::/home/bob:/usr/sbin/nologin\n"
        "carol:x:1002:1000::/home/carol:/bin/sh\n"
        f"legacy:{HASHES['carol']}:1003:1000::/:/bin/sh\n"
        "nopw:x:1004:1000::/:/bin/sh\n"
        "expired:x:1005:1000::/:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nusers:x:1000:bob,carol\nbob:x:1001:\n"
                               "wheel:x:10:alice\n")
    (etc / "shadow").write_text(
        "root:*:19000:0:99999:7:::\n"
        f"alice:{HASHES['alice']}:19000:0:99999:7:::\n"
        f"bob:!{HASHES['bob']}:19000:0:99999:7:::\n"
        f"carol:{HASHES['carol']}:19000:0:99999:7:::\n"
        "nopw::19000:0:99999:7:::\n"
        f"expired:{HASHES['alice']}:19000:0:99999:7::1:\n")
    (etc / "shells").write_text("/bin/sh\n/bin/bash\n")
    snap = users.gather(tmp_path)
    assert snap.errors == []
    encoded = msgpack.packb(snap.events) + repr(snap.events).encode() + repr(snap).encode()
    for value in HASHES.values():
        assert value.encode() not in encoded
        assert value.split("$")[-1].encode() not in encoded
    by_name = {e["name"]: e for e in snap.events if e["t"] == "user"}
    assert by_name["root"]["pw"] == "disabled"
    assert by_name["alice"]["pw"] == "set"
    assert by_name["bob"]["pw"] == "locked"
    assert by_name["legacy"]["pw"] == "set"
    assert by_name["nopw"]["pw"] == "empty"
    assert by_name["bob"]["login"] is False
    assert by_name["alice"]["login"] is True
    assert by_name["expired"]["login"] is False and by_name["expired"]["expired"] is True
    assert by_name["alice"]["groups"] == ["users", "wheel"]
    assert by_name["bob"]["groups"] == ["bob", "users"]


@pytest.mark.root
def test_real_shadow_hashes_never_in_events() -> None:
    shadow = Path("/etc/shadow").read_text()
    secrets = [f.split(":")[1].lstrip("!") for f in shadow.splitlines() if f.count(":") >= 2]
    secrets = [s for s in secrets if len(s) > 3]
    encoded = msgpack.packb(users.gather().events)
    for secret in secrets:
        assert secret.encode() not in encoded


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "etc/passwd").mkdir(parents=True)
    snap = users.gather(tmp_path)
    assert snap.events == []
    assert any(e.startswith("/etc/passwd:") for e in snap.errors)
    assert "/etc/group: missing" in snap.errors
    assert snap.skipped == ["password state: /etc/shadow is not readable"]


def test_password_states() -> None:
    assert password_state("") == "empty"
    assert password_state("!") == "disabled"
    assert password_state("!!") == "disabled"
    assert password_state("*") == "disabled"
    assert password_state("!*") == "disabled"
    assert password_state("!$6$a$b") == "locked"
    assert password_state("$6$a$b") == "set"
