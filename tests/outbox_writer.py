"""A child process for the outbox kill test (tests/test_outbox.py): it opens an outbox and,
until it is killed, stores batches, adds drops and acts as the uplink now and then. Each line
it prints (flushed at once) tells the parent what has happened, only after the call returned:

    r                      the outbox is open (recovery done)
    p SEQ                  put() stored batch SEQ
    x                      put() did not store a batch (rejected or refused; counted)
    D N / d N              about to add N "sink_full" drops / added and flushed to disk
    s SEQ DROPS            next_batch() returned batch SEQ whose envelope reports DROPS (JSON);
                           the batch counts as delivered
    c SEQ                  confirm() of batch SEQ returned

usage: outbox_writer.py DIR SEED MAX_BYTES TIMEOUT_S
"""

from __future__ import annotations

import json
import random
import struct
import sys

import msgpack

from agent.envelope import Identity, decode_envelope, sealer
from agent.outbox import Outbox

IDENT = Identity(agent="kill-test", ver="0", dev="dev", mod="mod")
PRIOS = ("High", "Medium", "Low")


def event_array(rng: random.Random, tag: int) -> tuple[bytes, int]:
    """A core-style batch: array32 header and `n` event maps, each carrying `tag` so that the
    parent can tell the batch's events were kept whole."""
    n = rng.randint(1, 40)
    body = b"".join(
        msgpack.packb({"t": "test", "ts": tag, "i": i, "pad": "x" * rng.randint(0, 60)})
        for i in range(n)
    )
    return b"\xdd" + struct.pack(">I", n) + body, n


def checked_drops(payload: bytes, seq: int) -> dict[str, int]:
    """The drops a stored batch's envelope reports, after checking the batch is whole."""
    env = decode_envelope(payload)
    assert env["seq"] == seq, (env["seq"], seq)
    assert [e["i"] for e in env["events"]] == list(range(env["n"]))
    drops: dict[str, int] = env["drops"]
    return drops


def main(argv: list[str]) -> int:
    path, seed, max_bytes, timeout_s = argv[1], int(argv[2]), int(argv[3]), float(argv[4])
    rng = random.Random(seed)
    out = sys.stdout

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    with Outbox(path, max_bytes, timeout_s) as ob:
        say("r")
        step = 0
        while True:
            step += 1
            roll = rng.random()
            if roll < 0.6:
                prio = rng.choice(PRIOS)
                events, n = event_array(rng, step)
                info = ob.put(prio, sealer(events, IDENT, prio, "Test"), n)
                say("x" if info is None else f"p {info.seq}")
            elif roll < 0.7:
                k = rng.randint(1, 5)
                say(f"D {k}")
                ob.drops.add("sink_full", k)
                ob.flush_state()
                say(f"d {k}")
            else:
                batch = ob.next_batch()
                if batch is None:
                    continue
                drops = checked_drops(batch.payload, batch.info.seq)
                say(f"s {batch.info.seq} {json.dumps(drops, separators=(',', ':'))}")
                ob.confirm(batch.info.id)
                say(f"c {batch.info.seq}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
