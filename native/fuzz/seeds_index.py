"""Seeds of fuzz_index: operation streams (see native/fuzz/fuzz_index.c for the encoding) that
fill an index to its bound, remove and prune in between, and clear it."""

from __future__ import annotations

import sys
from pathlib import Path


def op(code: int, key: bytes = b"", value: int | None = None) -> bytes:
    """One operation: code 0 put, 2 get, 3 delete, 5 prune, 6 clear, 7 long key."""
    return bytes([code | len(key) << 3]) + key + (bytes([value]) if value is not None else b"")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = [bytes([a, b]) for a in range(4) for b in range(4)]
    fill = b"".join(op(0, k, i) for i, k in enumerate(keys))
    lookups = b"".join(op(2, k) for k in keys)
    removals = b"".join(op(3, k) for k in keys[::2])
    for bound in (0, 7, 15, 63):  # byte 0: bound - 1; 0x40: the fallback seed
        for flags in (0x00, 0x40):
            data = bytes([bound | flags]) + fill + lookups + removals + fill + op(5, value=8)
            (out / f"fill-{bound}-{flags:02x}").write_bytes(data + lookups + op(6) + fill + op(7))
    (out / "empty-key").write_bytes(bytes([3]) + op(0, b"", 1) + op(2) + op(3) + op(2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
