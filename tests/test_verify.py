"""`micro-agent verify` (issue 14, item 5): the receiver's check that a device's batches are
complete, on delivery directories and on messages saved from the hub as JSON lines.

The envelopes are made by the agent's own code (agent.envelope.wrap and encode_batch, as the
outbox and the uplink make them); the end-to-end test runs `micro-agent run` on its local
default, checks what it delivered, deletes one batch and finds the gap."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.envelope import Identity, encode_batch, wrap

AGENT = [sys.executable, "-m", "agent.cli"]
IDENT = Identity(agent="agent-1", ver="0.1.0", dev="dev-1", mod="sec")


def events(*kinds: str, hits: int = 1) -> bytes:
    return bytes(msgpack.packb([{"t": k, "src": "test", "hits": hits} for k in kinds]))


def envelope(seq: int, *kinds: str, drops: dict[str, int] | None = None, boot: int = 1,
             ident: Identity = IDENT, ts: int | None = None) -> bytes:
    return wrap(events(*kinds), ident, seq=seq, ts=ts if ts is not None else 1_700_000_000_000 + seq,
                prio="High", coll=["Process"], drops=drops or {}, boot=boot)


def deliver(directory: Path, *batches: tuple[int, bytes]) -> Path:
    """Files as the local default names them."""
    directory.mkdir(parents=True, exist_ok=True)
    for seq, body in batches:
        (directory / f"{seq:020d}-high.msgpack").write_bytes(body)
    return directory


def verify(*args: str, stdin: bytes | None = None) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run([*AGENT, "verify", "--json", *args], input=stdin, capture_output=True, check=False,
                          timeout=60)
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr.decode()


def test_a_complete_directory_is_complete(tmp_path: Path) -> None:
    d = deliver(tmp_path / "delivered", *[(s, envelope(s, "exec", "exec", "net")) for s in range(5)])
    code, report, _ = verify(str(d))
    assert code == 0 and report["complete"] is True
    (dev,) = report["devices"]
    assert dev["device"] == "dev-1/sec"
    assert dev["batches"] == 5 and (dev["first_seq"], dev["last_seq"]) == (0, 4)
    assert dev["events"] == {"exec": 10, "net": 5} and dev["missing"] == []
    assert dev["first"].startswith("2023-11-14T22:13:20.000") and dev["last"].endswith("004+00:00")


def test_a_deleted_batch_is_a_gap(tmp_path: Path) -> None:
    d = deliver(tmp_path / "d", *[(s, envelope(s, "exec")) for s in range(10)])
    (d / f"{6:020d}-high.msgpack").unlink()
    (d / f"{7:020d}-high.msgpack").unlink()
    code, report, _ = verify(str(d))
    assert code == 1 and report["complete"] is False
    (dev,) = report["devices"]
    assert dev["missing"] == ["6-7"] and dev["unexplained"] == 2
    plain = subprocess.run([*AGENT, "verify", str(d)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert plain.returncode == 1
    assert "missing seq: 6-7 (2; 0 explained by the drops reported, 2 lost)" in plain.stdout
    assert plain.stdout.rstrip().endswith("verdict: INCOMPLETE")


def test_batches_the_envelopes_say_were_dropped_are_no_loss(tmp_path: Path) -> None:
    d = deliver(tmp_path / "d", (0, envelope(0, "exec")), (1, envelope(1, "exec")),
                (4, envelope(4, "exec", drops={"outbox_full_batches": 2, "outbox_full_events": 9,
                                               "sink_full": 3})))
    code, report, _ = verify(str(d))
    (dev,) = report["devices"]
    assert dev["missing"] == ["2-3"] and dev["explained_by_drops"] == 2 and dev["unexplained"] == 0
    assert dev["drops"] == {"outbox_full_batches": 2, "outbox_full_events": 9, "sink_full": 3}
    assert code == 0


def test_duplicates_count_once(tmp_path: Path) -> None:
    first = deliver(tmp_path / "a", (0, envelope(0, "exec")), (1, envelope(1, "exec")))
    again = deliver(tmp_path / "b", (1, envelope(1, "exec")))  # resent after a lost confirm
    code, report, _ = verify(str(first), str(again))
    (dev,) = report["devices"]
    assert code == 0 and dev["duplicates"] == 1 and dev["events"] == {"exec": 2}


def saved(body: bytes, part: Any, device: str = "dev-1", module: str = "sec",
          as_text: bool = False) -> str:
    """One message as saved from the Event Hub-compatible endpoint."""
    system = {"iothub-connection-device-id": device, "iothub-connection-module-id": module,
              "content-type": part.content_type}
    doc: dict[str, Any] = {"system_properties": system, "properties": {"seq": "?"}}
    if as_text:
        doc["body"] = body.decode()
    else:
        doc["body_base64"] = base64.b64encode(body).decode()
    return json.dumps(doc)


def test_saved_hub_messages_with_split_json_batches(tmp_path: Path) -> None:
    """JSON bodies split into parts (as encode_batch splits them), msgpack bodies in base64,
    two devices; one part of one batch lost: that batch is incomplete."""
    lines: list[str] = []
    for seq in range(3):
        payload = wrap(events(*["exec"] * 400), IDENT, seq=seq, ts=1_700_000_000_000, prio="Low",
                       coll=["Process"], drops={})
        parts = encode_batch(payload, "json", 4096)
        assert len(parts) > 2
        for i, part in enumerate(parts):
            if seq == 1 and i == 1:
                continue  # this part never arrived
            lines.append(saved(part.body, part, as_text=True))
    other = Identity(agent="agent-2", ver="0.1.0", dev="dev-2", mod="sec")
    for seq in range(2):
        (part,) = encode_batch(envelope(seq, "login", ident=other), "msgpack", 4096)
        lines.append(saved(part.body, part, device="dev-2"))
    lines.append("{not json")
    saved_file = tmp_path / "messages.jsonl"
    saved_file.write_text("\n".join(lines) + "\n")
    code, report, _ = verify(str(saved_file))
    assert code == 1
    one, two = report["devices"]
    assert one["device"] == "dev-1/sec" and two["device"] == "dev-2/sec"
    assert list(one["incomplete"]) == ["1"] and one["incomplete"]["1"] == [2]
    assert one["missing"] == [] and two["complete"] is True and two["events"] == {"login": 2}
    (bad,) = report["unreadable"]
    assert bad.startswith(f"{saved_file}:{len(lines)}: ")
    # The same from stdin, without the bad line and the lost part: complete.
    good = [line for line in lines if line != "{not json"]
    payload = wrap(events(*["exec"] * 400), IDENT, seq=1, ts=1_700_000_000_000, prio="Low",
                   coll=["Process"], drops={})
    missing_part = encode_batch(payload, "json", 4096)[1]
    good.append(saved(missing_part.body, missing_part, as_text=True))
    code, report, _ = verify("-", stdin=("\n".join(good) + "\n").encode())
    assert code == 0 and report["complete"] is True, report


def test_unreadable_and_missing_inputs(tmp_path: Path) -> None:
    d = deliver(tmp_path / "d", (0, envelope(0, "exec")))
    (d / f"{1:020d}-high.msgpack").write_bytes(envelope(1, "exec")[:-3])  # torn
    code, report, _ = verify(str(d))
    assert code == 1 and len(report["unreadable"]) == 1
    code, _, err = verify(str(tmp_path / "absent"))
    assert code == 2 and "no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, report, _ = verify(str(tmp_path / "empty"))
    assert code == 1 and report == {"complete": False, "devices": [], "unreadable": []}


@pytest.mark.live
@pytest.mark.root
@pytest.mark.timeout(180)
def test_end_to_end_the_local_default_then_a_deleted_batch(tmp_path: Path) -> None:
    """The agent's own deliveries verify complete; a batch deleted from the middle is found.
    Small messages and a small Process cache make batches within seconds: the aggregator sends
    its oldest entry early when the cache is full, and a 4 KiB batch seals after a few dozen."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "Upload_MaxMessageBytes": 4096, "Process_CacheSize": 8,
        "Process_Mode": 2}))  # the proc connector: audit stays the kernel's
    data = tmp_path / "data"
    proc = subprocess.Popen([*AGENT, "run", "--data-dir", str(data), "--config", str(config),
                             "--runtime-dir", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    delivered = data / "delivered"
    try:
        deadline = time.monotonic() + 120
        n = 0
        while time.monotonic() < deadline and len(list(delivered.glob("*.msgpack"))) < 5:
            for _ in range(20):
                n += 1
                subprocess.run(["/bin/true", f"verify-{n}"], check=True)  # one entry each
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    files = sorted(delivered.glob("*.msgpack"))
    assert len(files) >= 5
    code, report, _ = verify(str(delivered))
    assert code == 0, report
    (dev,) = report["devices"]
    assert dev["batches"] == len(files) and dev["first_seq"] == 0
    assert dev["events"].get("exec", 0) > 0
    middle = files[len(files) // 2]
    seq = int(middle.name.split("-")[0])
    os.unlink(middle)
    code, report, _ = verify(str(delivered))
    assert code == 1 and report["devices"][0]["missing"] == [str(seq)]
