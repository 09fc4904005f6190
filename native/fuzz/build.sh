#!/usr/bin/env bash
# native/fuzz/build.sh [OUT]: builds the libFuzzer harnesses (ASan + UBSan) into OUT (default
# native/fuzz/out) and writes their seed corpora into OUT/seeds/<harness>/, cut from a few
# real lines of the recorded tests/fixtures/audit/device-{raw,enriched}.log (AUDIT_CORPUS
# names another folder with the same two logs).
#
# Then, for example:  native/fuzz/out/fuzz_audit_text -max_total_time=60 \
#                         native/fuzz/corpus-text native/fuzz/out/seeds/fuzz_audit_text
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$(mkdir -p "${1:-$root/native/fuzz/out}" && cd "${1:-$root/native/fuzz/out}" && pwd)
corpus=${AUDIT_CORPUS:-$root/tests/fixtures/audit}
cc=${CC:-clang-14}
cd "$root"

# The house flags of native/build_core.py (C11, -Wall -Wextra -Werror, _GNU_SOURCE), with the
# fuzzer and the sanitizers; native/*.c is the whole core, without the cffi glue.
flags=(-std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Wall -Wextra -Werror -D_GNU_SOURCE -I native)
# Every native/fuzz/fuzz_*.c is a harness.
harnesses=()
for src in native/fuzz/fuzz_*.c; do harnesses+=("$(basename "$src" .c)"); done
for name in "${harnesses[@]}"; do
    "$cc" "${flags[@]}" native/*.c "native/fuzz/$name.c" -o "$out/$name" &
done
failed=0
for _ in "${harnesses[@]}"; do wait -n || failed=1; done
[ "$failed" = 0 ] || { echo "native/fuzz/build.sh: a harness did not build" >&2; exit 1; }

for log in device-raw.log device-enriched.log; do
    [ -f "$corpus/$log" ] || { echo "native/fuzz/build.sh: no $corpus/$log" >&2; exit 1; }
done
rm -rf "$out/seeds"
for name in "${harnesses[@]}"; do mkdir -p "$out/seeds/$name"; done
python3 - "$corpus" "$out/seeds" <<'PY'
"""Seeds: for each record type, its first and its longest line in each log (text and netlink
form), plus a few runs of consecutive lines: whole events with their records interleaved."""
import pathlib
import struct
import sys

corpus, seeds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# linux/audit.h and libaudit.h numbers of the types these logs hold.
TYPES = {
    "LOGIN": 1006, "USER_AUTH": 1100, "USER_ACCT": 1101, "CRED_ACQ": 1103, "CRED_DISP": 1104,
    "USER_START": 1105, "USER_END": 1106, "USER_LOGIN": 1112, "ADD_USER": 1114,
    "DEL_USER": 1115, "ADD_GROUP": 1116, "DEL_GROUP": 1117, "DAEMON_START": 1200,
    "DAEMON_END": 1201, "SYSCALL": 1300, "PATH": 1302, "CONFIG_CHANGE": 1305,
    "SOCKADDR": 1306, "CWD": 1307, "EXECVE": 1309, "EOE": 1320, "BPRM_FCAPS": 1321,
    "PROCTITLE": 1327,
}
text_dir, record_dir = seeds / "fuzz_audit_text", seeds / "fuzz_audit_record"
n = 0
for log in ("device-raw.log", "device-enriched.log"):
    lines = (corpus / log).read_bytes().splitlines(keepends=True)
    picked = {}
    for line in lines:
        rtype = line.split(b" ", 1)[0].removeprefix(b"type=").decode("ascii", "replace")
        first, longest = picked.get(rtype, (line, line))
        picked[rtype] = (first, max(longest, line, key=len))
    chosen = {line for pair in picked.values() for line in pair}
    for line in sorted(chosen):
        n += 1
        (text_dir / f"line-{n}").write_bytes(line)
        rtype = line.split(b" ", 1)[0].removeprefix(b"type=").decode("ascii", "replace")
        _, sep, payload = line.partition(b" msg=")
        if rtype in TYPES and sep:
            (record_dir / f"record-{n}").write_bytes(
                struct.pack("<H", TYPES[rtype]) + payload.rstrip(b"\n"))
    # Runs of whole lines: the start of the log, and the first exec with a split argument.
    starts = [0] + [i for i, line in enumerate(lines) if b"a1_len=" in line][:1]
    for start in starts:
        n += 1
        (text_dir / f"run-{n}").write_bytes(b"".join(lines[max(0, start - 6):start + 12]))
(seeds / "fuzz_msgpack" / "empty-map").write_bytes(b"\x05\x08\x00")
PY
# A harness of a binary decoder may bring its seed writer: native/fuzz/seeds_<harness>.py DIR.
for name in "${harnesses[@]}"; do
    writer="native/fuzz/seeds_${name#fuzz_}.py"
    if [ -f "$writer" ]; then python3 "$writer" "$out/seeds/$name"; fi
done
echo "native/fuzz/build.sh: built ${harnesses[*]} and their seeds in $out"
