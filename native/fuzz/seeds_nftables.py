"""native/fuzz/seeds_nftables.py DIR: seeds for fuzz_nftables: the recordings of real rulesets
in tests/fixtures/nftables/*.bin (nft and iptables-nft; made by tests/nft_record.py), each
whole, cut to its rules alone, and with every bound of the harness's option byte (its first
byte: bit 0 small output, bit 1 one set element, bit 2 small rule text, bit 3 small dumps),
and the inputs that once broke the harness, kept whole in native/fuzz/regressions/nftables/."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "nftables"
REGRESSIONS = Path(__file__).resolve().parent / "regressions" / "nftables"
NEWRULE = (10 << 8) | 6


def _messages(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset + 16 <= len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        if length < 16:
            break
        out.append(data[offset: offset + length])
        offset += (length + 3) & ~3
    return out


def seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for i, path in enumerate(sorted(FIXTURES.glob("*.bin"))):
        data = path.read_bytes()
        rules = b"".join(m for m in _messages(data)
                         if struct.unpack_from("=H", m, 4)[0] == NEWRULE)
        out[f"{path.stem}"] = bytes([0]) + data
        out[f"{path.stem}-rules"] = bytes([0]) + rules
        out[f"{path.stem}-bounds"] = bytes([1 + (i % 15)]) + data
        # Small rule text and small output: rules left out as undecodable, then a result that
        # outgrows max_output_bytes and is thrown away with their errors (the stats once kept
        # counting them undecodable).
        out[f"{path.stem}-undecodable-overflow"] = bytes([1 | 4]) + data
    for path in sorted(REGRESSIONS.iterdir()):
        out[f"regression-{path.name}"] = path.read_bytes()
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (target / name).write_bytes(data)
