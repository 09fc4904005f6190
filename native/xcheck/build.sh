#!/usr/bin/env bash
# native/xcheck/build.sh [OUT]: builds native/xcheck/driver.c with the whole core (native/*.c,
# no Python) for x86_64 (host gcc), aarch64 and armhf (Debian's cross gcc, statically linked so
# that qemu-user runs them without a target root file system) into OUT (default
# native/xcheck/out), as OUT/driver-<arch>. The house flags of native/build_core.py: C11,
# -Wall -Wextra -Werror, _GNU_SOURCE.
#
# armhf is built twice: driver-armhf with -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 (64-bit
# time_t and off_t, as Debian builds armhf from trixie on, the 2038 transition), and
# driver-armhf-time32 with glibc's default 32-bit time_t and off_t, as Debian 12 (bookworm)
# builds its armhf python3 and so the core a package for it compiles. The core must give the
# same bytes with either.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$(mkdir -p "${1:-$root/native/xcheck/out}" && cd "${1:-$root/native/xcheck/out}" && pwd)
cd "$root"

# The driver fixes every clock the core reads (driver.c: fixed_clock): the linker sends the
# core's clock_gettime calls to it. With 64-bit time_t on armhf, glibc's headers call the
# function __clock_gettime64, the name libc.a itself uses inside: there its own few calls
# (malloc's and mkstemp's seeding, which take getrandom's bits too) get the fixed clock too.
flags=(-std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -I native)
wrap=(-Wl,--wrap=clock_gettime)
sources=(native/*.c native/xcheck/driver.c)
build() { # build NAME CC [FLAGS...]
    local name=$1 cc=$2
    shift 2
    command -v "$cc" >/dev/null || { echo "native/xcheck/build.sh: no $cc" >&2; return 1; }
    "$cc" "${flags[@]}" "$@" "${sources[@]}" -o "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
}
pids=()
build driver-x86_64 "${CC:-gcc}" "${wrap[@]}" & pids+=($!)
build driver-aarch64 aarch64-linux-gnu-gcc -static "${wrap[@]}" & pids+=($!)
build driver-armhf arm-linux-gnueabihf-gcc -static -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 \
    -Wl,--wrap=__clock_gettime64 & pids+=($!)
build driver-armhf-time32 arm-linux-gnueabihf-gcc -static "${wrap[@]}" & pids+=($!)
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "native/xcheck/build.sh: a driver did not build" >&2; exit 1; }
echo "native/xcheck/build.sh: built driver-x86_64 driver-aarch64 driver-armhf driver-armhf-time32 in $out"
