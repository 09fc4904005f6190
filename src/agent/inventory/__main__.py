"""python3 -m agent.inventory NAME ROOT: one gatherer's snapshot, written to stdout as one
msgpack map {"events": [...], "errors": [...], "skipped": [...]}.

The agent runs Firewall (its netlink reader and decoder, only when the ruleset changed) this
way, in a short-lived child, so that a small device does not carry them between two
snapshots. SystemInformation runs in the agent (its rtnetlink dumps are small)."""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m agent.inventory firewall ROOT", file=sys.stderr)
        return 2
    name, root = argv[0], Path(argv[1])
    if name == "firewall":
        from agent.inventory import firewall

        snap = firewall.gather(root)
    else:
        print(f"python3 -m agent.inventory: no gatherer {name!r}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(msgpack.packb(
        {"events": snap.events, "errors": snap.errors, "skipped": snap.skipped,
         "volatile": snap.volatile}, use_bin_type=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
