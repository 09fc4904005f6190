"""micro-agent: the command line."""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, Optional, Sequence

from agent import __version__

READ_CHUNK = 1 << 20


def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def parse_audit(args: argparse.Namespace) -> int:
    from agent.jsonl import batch_lines
    from agent.native import AuditParser

    parser = AuditParser()
    out = sys.stdout.buffer
    jsonl = args.format == "jsonl"

    def emit(batches: list[bytes]) -> None:
        for batch in batches:
            if jsonl:
                out.writelines(batch_lines(batch))
            else:
                out.write(batch)

    try:
        source = _open_input(args.file)
    except OSError as err:
        print(f"micro-agent: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    try:
        with source:
            while True:
                chunk = source.read(READ_CHUNK)
                if not chunk:
                    break
                emit(parser.feed(chunk))
        emit(parser.flush())
        out.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        return 0
    s = parser.stats()
    print(
        f"parse-audit: {s.records} records, {s.events} events, {s.batches} batches, "
        f"lost {s.gaps} (serial gaps), {s.duplicates} duplicate serials, "
        f"{s.malformed} malformed lines, {s.long_lines} long lines, "
        f"{s.truncated} truncated events",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="micro-agent", description=__doc__)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    pa = sub.add_parser(
        "parse-audit",
        help="parse an audit log into events (docs/events.md)",
        description="Read audit log text (a file or - for stdin) and print its events.",
    )
    pa.add_argument("file", nargs="?", default="-", help="audit log, or - for stdin (default)")
    pa.add_argument(
        "--format",
        choices=["jsonl", "msgpack"],
        default="jsonl",
        help="jsonl: one JSON event per line (default); msgpack: the raw batches",
    )
    pa.set_defaults(func=parse_audit)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
