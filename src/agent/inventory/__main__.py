"""python3 -m agent.inventory NAME ROOT [OVERRIDES_JSON]: one gatherer's snapshot, written to
stdout as one msgpack map {"events": [...], "errors": [...], "skipped": [...]}.

The agent runs SystemInformation (pyroute2's IPRoute: its import alone holds about 17 MB) this
way, in a short-lived child, so that a small device does not carry it between two snapshots.
(Firewall runs in the agent: its ruleset is decoded in the C core, native/nftables.c.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgpack


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python3 -m agent.inventory sysinfo ROOT [OVERRIDES_JSON]",
              file=sys.stderr)
        return 2
    name, root = argv[0], Path(argv[1])
    if name == "sysinfo":
        from agent.inventory import sysinfo

        overrides = json.loads(argv[2]) if len(argv) == 3 else {}
        snap = sysinfo.gather(root, overrides=overrides)
    else:
        print(f"python3 -m agent.inventory: no gatherer {name!r}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(msgpack.packb(
        {"events": snap.events, "errors": snap.errors, "skipped": snap.skipped,
         "volatile": snap.volatile}, use_bin_type=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
