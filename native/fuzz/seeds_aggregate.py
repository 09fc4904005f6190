"""Seeds of fuzz_aggregate: batches of exec, net and conn events as the sources write them
(msgpack arrays of maps), for each kind byte; several batches joined by the 0xff 0xfe mark;
and a checkpoint's entries (a batch marked 0xfd) read back before events that merge with them;
and the inputs that once broke the harness, kept whole in native/fuzz/regressions/aggregate/."""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack

REGRESSIONS = Path(__file__).resolve().parent / "regressions" / "aggregate"


def array32(events: list[dict[str, object]]) -> bytes:
    body = b"".join(msgpack.packb(e) for e in events)
    return b"\xdd" + len(events).to_bytes(4, "big") + body


def main(out: Path) -> None:
    execs = [{"t": "exec", "ts": 1700000000000 + i, "pid": 100 + i, "uid": i % 2,
              "exe": "/bin/true", "argv": ["/bin/true", str(i % 3)], "ok": True} for i in range(8)]
    nets = [{"t": "net", "ts": 1700000000000 + i, "dir": ("in", "out")[i % 2], "fam": "inet",
             "raddr": "10.0.0.1", "rport": 443 + i % 2, "lport": 40000 + i, "exe": "/usr/bin/x"}
            for i in range(8)]
    conns = [{"t": "conn", "src": "diag", "op": "close", "ts": i, "proto": "tcp", "dir": "out",
              "laddr": "::1", "raddr": "::1", "lport": 50000 + i, "rport": 22, "rx": i, "tx": 2 * i}
             for i in range(6)]
    other = [{"t": "auth", "ts": 1, "op": "login", "acct": "root"}]
    out.mkdir(parents=True, exist_ok=True)
    for kind in (0x00, 0x01, 0x06, 0x07, 0x10, 0x11, 0x21, 0x40, 0x60, 0x81, 0xa1):
        for name, events in (("exec", execs), ("net", nets), ("conn", conns)):
            data = bytes([kind]) + array32(events + other) + b"\xff\xfe" + array32(events[:3])
            (out / f"{name}-{kind:02x}").write_bytes(data)
            # A checkpoint's entries read back (0xfd): the same events with hits and a span,
            # one with first/last nil, then events that merge with them.
            entries = [{**e, "hits": 1 + i, "first": e["ts"], "last": int(e["ts"]) + i}
                       for i, e in enumerate(events[:4])]
            entries.append({**events[0], "hits": 2, "first": None, "last": None})
            restore = bytes([kind]) + b"\xfd" + array32(entries) + b"\xff\xfe" + array32(events)
            (out / f"{name}-restore-{kind:02x}").write_bytes(restore)
    # The inputs that once broke the harness, kept whole (the kind byte included).
    for path in sorted(REGRESSIONS.iterdir()):
        (out / f"regression-{path.name}").write_bytes(path.read_bytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
