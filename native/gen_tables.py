#!/usr/bin/python3
"""Generate the audit name tables: arch, syscall and record type names, written twice from one
set of data, for the C core and for the pure-Python reference parser that tests it.

Outputs (both committed, so a normal build never runs this):
  * native/audit_tables.c: am_arch_name, am_syscall_name, am_record_type_name/_number;
  * tests/oracle/audit_names.py: the same tables as Python dicts (tests/oracle/audit_reference.py).

Run from anywhere with Debian's Python, which has the libaudit bindings:

    /usr/bin/python3 native/gen_tables.py            # rewrite both files
    /usr/bin/python3 native/gen_tables.py --check    # exit 1, with a diff summary, if stale

Needs (Debian packages, scripts/test installs them): python3-audit, cpp, linux-libc-dev,
linux-libc-dev-arm64-cross and linux-libc-dev-armhf-cross.

Where the data comes from:
  * syscalls: the kernel's uapi headers, read through the C preprocessor (x86_64 and i386 from
    the host's asm/unistd.h, aarch64 and arm EABI from the cross packages' asm/unistd.h).  They
    are cross-checked against libaudit's tables (the ones `ausyscall --dump` prints): every
    number libaudit names must carry the same name in the header, except the differences listed
    in KNOWN_AUDIT_DIFFERENCES (libaudit's typos and renames, arm's OABI-only calls); the header
    wins.  Numbers only the header knows (libaudit older than the kernel) are kept.
  * record types: the union of libaudit's names (audit_msg_type_to_name) and the kernel's
    AUDIT_* message types (linux/audit.h, 1100 and up; in 1000-1099, the netlink command range,
    only the records libaudit names: USER and LOGIN).  The two must agree where both name a
    number.

The generator is deterministic and prints nothing but errors.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
# Each output by its path in the repository.
C_TABLES = Path("native/audit_tables.c")
PY_NAMES = Path("tests/oracle/audit_names.py")


class GenError(Exception):
    pass


@dataclass(frozen=True)
class Arch:
    name: str          # the name am_arch_name returns
    audit_arch: int    # AUDIT_ARCH_* value (linux/audit.h)
    macro: str         # its name in linux/audit.h, for the cross-check
    cpp_flags: tuple[str, ...]
    machine: str       # libaudit MACH_* constant
    package: str       # Debian package that provides the header


ARCHES = (
    Arch("x86_64", 0xC000003E, "AUDIT_ARCH_X86_64",
         ("-I/usr/include/x86_64-linux-gnu", "-I/usr/include", "-D__x86_64__", "-D__LP64__"),
         "MACH_86_64", "linux-libc-dev"),
    Arch("i386", 0x40000003, "AUDIT_ARCH_I386",
         ("-I/usr/include/x86_64-linux-gnu", "-I/usr/include", "-D__i386__"),
         "MACH_X86", "linux-libc-dev"),
    Arch("aarch64", 0xC00000B7, "AUDIT_ARCH_AARCH64",
         ("-I/usr/aarch64-linux-gnu/include", "-D__aarch64__", "-D__LP64__"),
         "MACH_AARCH64", "linux-libc-dev-arm64-cross"),
    Arch("arm", 0x40000028, "AUDIT_ARCH_ARM",
         ("-I/usr/arm-linux-gnueabihf/include", "-D__arm__", "-D__ARM_EABI__"),
         "MACH_ARM", "linux-libc-dev-armhf-cross"),
)

# __NR_* macros that are not syscalls.
NOT_SYSCALLS = {"syscalls", "arch_specific_syscall", "SYSCALL_BASE", "SYSCALL_MASK",
                "OABI_SYSCALL_BASE"}

# (arch, number) -> (libaudit's name or None when it has none, the header's name or None when
# the header has none).  Expected differences between libaudit 3.0.9 and the kernel headers.
KNOWN_AUDIT_DIFFERENCES: dict[tuple[str, int], tuple[str, str | None]] = {
    ("x86_64", 17): ("pread", "pread64"),
    ("x86_64", 18): ("pwrite", "pwrite64"),
    ("i386", 283): ("sys_kexec_load", "kexec_load"),
    ("i386", 423): ("sched_rr_get_interval64", "sched_rr_get_interval_time64"),
    ("aarch64", 61): ("getdents", "getdents64"),
    ("aarch64", 67): ("pread", "pread64"),
    ("aarch64", 68): ("pwrite", "pwrite64"),
    ("aarch64", 80): ("newfstat", "fstat"),
    ("arm", 140): ("llseek", "_llseek"),
    ("arm", 142): ("newselect", "_newselect"),
    ("arm", 149): ("sysctl", "_sysctl"),
    ("arm", 270): ("fadvise64_64", "arm_fadvise64_64"),
    ("arm", 341): ("sync_file_range", "arm_sync_file_range"),
    ("arm", 423): ("sched_rr_get_interval64", "sched_rr_get_interval_time64"),
    # OABI-only calls that the EABI kernel does not have.
    ("arm", 13): ("time", None),
    ("arm", 22): ("umount", None),
    ("arm", 25): ("stime", None),
    ("arm", 27): ("alarm", None),
    ("arm", 30): ("utime", None),
    ("arm", 76): ("getrlimit", None),
    ("arm", 82): ("select", None),
    ("arm", 89): ("readdir", None),
    ("arm", 90): ("mmap", None),
    ("arm", 102): ("socketcall", None),
    ("arm", 113): ("syscall", None),
    ("arm", 117): ("ipc", None),
}

# Numbers the agent's rules depend on: the generator refuses to write tables that disagree.
REQUIRED_SYSCALLS: dict[str, dict[str, int | None]] = {
    "x86_64": {"execve": 59, "execveat": 322, "connect": 42, "accept": 43, "accept4": 288,
               "bind": 49, "socketcall": None, "sendto": 44, "ptrace": 101, "open": 2,
               "openat": 257},
    "i386": {"execve": 11, "execveat": 358, "connect": 362, "accept": None, "accept4": 364,
             "bind": 361, "socketcall": 102, "sendto": 369, "ptrace": 26, "open": 5,
             "openat": 295},
    "aarch64": {"execve": 221, "execveat": 281, "connect": 203, "accept": 202, "accept4": 242,
                "bind": 200, "socketcall": None, "sendto": 206, "ptrace": 117, "open": None,
                "openat": 56},
    "arm": {"execve": 11, "execveat": 387, "connect": 283, "accept": 285, "accept4": 366,
            "bind": 282, "socketcall": None, "sendto": 290, "ptrace": 26, "open": 5,
            "openat": 322},
}

REQUIRED_RECORD_TYPES = {
    "LOGIN": 1006, "USER_AUTH": 1100, "USER_ACCT": 1101, "USER_MGMT": 1102, "CRED_ACQ": 1103,
    "CRED_DISP": 1104, "USER_START": 1105, "USER_END": 1106, "USER_AVC": 1107,
    "CRED_REFR": 1110, "USER_LOGIN": 1112, "ADD_USER": 1114, "DEL_USER": 1115,
    "ADD_GROUP": 1116, "DEL_GROUP": 1117, "GRP_MGMT": 1132, "DAEMON_START": 1200,
    "DAEMON_END": 1201, "SYSCALL": 1300, "PATH": 1302, "SOCKETCALL": 1304,
    "CONFIG_CHANGE": 1305, "SOCKADDR": 1306, "CWD": 1307, "EXECVE": 1309, "EOE": 1320,
    "BPRM_FCAPS": 1321, "NETFILTER_CFG": 1325, "PROCTITLE": 1327, "BPF": 1334,
    "URINGOP": 1336, "AVC": 1400, "ANOM_PROMISCUOUS": 1700, "ANOM_ABEND": 1701,
    "ANOM_LOGIN_FAILURES": 2100,
}

RECORD_NAME = re.compile(rb"[A-Z][A-Z0-9_]*")
SYSCALL_NAME = re.compile(r"[a-z_][a-z0-9_]*")


# ---------------------------------------------------------------------------------------------
# sources


def _run(argv: list[str], stdin: str = "") -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GenError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise GenError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def _preprocess(flags: tuple[str, ...], source: str, *extra: str) -> str:
    return _run(["cpp", "-undef", "-nostdinc", *extra, *flags, "-"], source)


def _eval_int(expr: str, what: str) -> int:
    """A preprocessed macro value: integers, parentheses, +, - and |."""
    if not re.fullmatch(r"[0-9a-fA-FxXuUlL+\-|() \t]+", expr):
        raise GenError(f"{what}: cannot evaluate {expr!r}")
    cleaned = re.sub(r"(?<=[0-9a-fA-F])[uUlL]+\b", "", expr)
    try:
        value = eval(cleaned, {"__builtins__": {}}, {})  # checked above: digits and operators only
    except SyntaxError as exc:
        raise GenError(f"{what}: cannot evaluate {expr!r}") from exc
    if not isinstance(value, int):
        raise GenError(f"{what}: {expr!r} is not an integer")
    return value


def header_syscalls(arch: Arch) -> dict[int, str]:
    """number -> name from the arch's asm/unistd.h, aliases dropped."""
    defines = _preprocess(arch.cpp_flags, "#include <asm/unistd.h>\n", "-dM")
    names = []
    for match in re.finditer(r"^#define __NR_(\w+)[ \t]+(.*)$", defines, re.MULTILINE):
        name, body = match.group(1), match.group(2).strip()
        if name in NOT_SYSCALLS or re.fullmatch(r"__NR_\w+", body):
            continue  # a marker, or an alias of another __NR_ name
        names.append(name)
    if not names:
        raise GenError(f"{arch.name}: no __NR_ macros (is {arch.package} installed?)")
    probe = "#include <asm/unistd.h>\n" + "".join(f'"{n}" __NR_{n}\n' for n in sorted(names))
    table: dict[int, str] = {}
    values = _preprocess(arch.cpp_flags, probe, "-P")
    for match in re.finditer(r'^"(\w+)" (.*)$', values, re.MULTILINE):
        name = match.group(1)
        number = _eval_int(match.group(2), f"{arch.name} __NR_{name}")
        if not SYSCALL_NAME.fullmatch(name):
            raise GenError(f"{arch.name}: odd syscall name {name!r}")
        if not 0 <= number < 0x10000:
            raise GenError(f"{arch.name}: __NR_{name} = {number:#x} is out of range")
        if number in table:
            raise GenError(f"{arch.name}: {number} is both {table[number]} and {name}")
        table[number] = name
    if len(table) != len(names):
        raise GenError(f"{arch.name}: {len(names)} macros but {len(table)} values")
    return table


def audit_syscalls(audit: ModuleType, arch: Arch) -> dict[int, str]:
    machine = getattr(audit, arch.machine)
    table: dict[int, str] = {}
    for number in range(4096):
        name = audit.audit_syscall_to_name(number, machine)
        if name:
            table[number] = str(name)
    if not table:
        raise GenError(f"libaudit has no syscall table for {arch.name}")
    return table


def merge_syscalls(arch: Arch, header: dict[int, str], libaudit: dict[int, str]) -> list[str]:
    problems = []
    for number in sorted(set(header) | set(libaudit)):
        ours, theirs = header.get(number), libaudit.get(number)
        if theirs is None or ours == theirs:
            continue  # the kernel is newer than libaudit, or they agree
        if KNOWN_AUDIT_DIFFERENCES.get((arch.name, number)) != (theirs, ours):
            problems.append(f"{arch.name} {number}: header {ours}, libaudit {theirs}")
    by_name = {name: number for number, name in header.items()}
    for name, want in REQUIRED_SYSCALLS[arch.name].items():
        if by_name.get(name) != want:
            problems.append(f"{arch.name} {name}: expected {want}, header has {by_name.get(name)}")
    return problems


def header_record_types() -> dict[int, str]:
    flags = ("-I/usr/include/x86_64-linux-gnu", "-I/usr/include")
    defines = _preprocess(flags, "#include <linux/audit.h>\n", "-dM")
    table: dict[int, str] = {}
    for match in re.finditer(r"^#define AUDIT_(\w+)[ \t]+([0-9]+)[ \t]*$", defines, re.MULTILINE):
        name, number = match.group(1), int(match.group(2))
        if not 1100 <= number <= 2999 or name.startswith(("FIRST_", "LAST_")):
            continue
        if number in table:
            raise GenError(f"linux/audit.h: {number} is both {table[number]} and {name}")
        table[number] = name
    if not table:
        raise GenError("linux/audit.h has no record types (is linux-libc-dev installed?)")
    return table


def header_arch_values() -> dict[str, int]:
    flags = ("-I/usr/include/x86_64-linux-gnu", "-I/usr/include")
    probe = "#include <linux/audit.h>\n" + "".join(f'"{a.macro}" {a.macro}\n' for a in ARCHES)
    out = _preprocess(flags, probe, "-P")
    return {m.group(1): _eval_int(m.group(2), m.group(1))
            for m in re.finditer(r'^"(\w+)" (.*)$', out, re.MULTILINE)}


def audit_record_types(audit: ModuleType) -> dict[int, str]:
    table: dict[int, str] = {}
    for number in range(0x10000):
        name = audit.audit_msg_type_to_name(number)
        if name:
            table[number] = str(name)
    return table


def merge_record_types(header: dict[int, str], libaudit: dict[int, str]) -> dict[int, str]:
    problems = []
    merged = dict(libaudit)
    for number, name in header.items():
        if merged.setdefault(number, name) != name:
            problems.append(f"record {number}: header {name}, libaudit {merged[number]}")
    by_name: dict[str, int] = {}
    for number, name in sorted(merged.items()):
        if not RECORD_NAME.fullmatch(name.encode()):
            problems.append(f"record {number}: odd name {name!r}")
        if name in by_name:
            problems.append(f"record name {name} is both {by_name[name]} and {number}")
        by_name[name] = number
    for name, want in REQUIRED_RECORD_TYPES.items():
        if by_name.get(name) != want:
            problems.append(f"record {name}: expected {want}, got {by_name.get(name)}")
    if problems:
        raise GenError("record types:\n  " + "\n  ".join(problems))
    return merged


def package_versions(packages: list[str]) -> list[str]:
    out = []
    for package in packages:
        try:
            version = _run(["dpkg-query", "-W", "-f=${Version}", package]).strip()
        except GenError:
            version = "unknown version"
        out.append(f"{package} {version}")
    return out


# ---------------------------------------------------------------------------------------------
# output


class Pool:
    """Names as the members of one struct of char arrays: each name is its own short string
    literal (no literal beyond the 4095 bytes C requires compilers to take), and the compiler
    computes each name's offset with offsetof.  Member `none` at offset 0 means 'no name'."""

    def __init__(self, tag: str, prefix: str) -> None:
        self.tag = tag
        self.prefix = prefix
        self.names: list[str] = []

    def add(self, name: str) -> None:
        if name not in self.names:
            self.names.append(name)

    def member(self, name: str) -> str:
        return self.prefix + name

    def emit(self, var: str, what: str) -> list[str]:
        lines = [f"/* {what}: one NUL-terminated member each; offset 0 (`none`) is no name. */",
                 f"static const struct {self.tag} {{", "    char none[1];"]
        lines += [f"    char {self.member(n)}[{len(n) + 1}];" for n in self.names]
        lines += [f"}} {var} = {{", '    "",']
        lines += [f'    "{n}",' for n in self.names]
        lines += ["};", f"_Static_assert(sizeof {var} <= UINT16_MAX, \"uint16_t offsets\");"]
        return lines


def render(syscalls: dict[str, dict[int, str]], records: dict[int, str],
           sources: list[str]) -> str:
    out = [
        "/* audit_tables.c: GENERATED by native/gen_tables.py -- do not edit.",
        " * Regenerate with: /usr/bin/python3 native/gen_tables.py",
        " * From:",
        *(f" *   {source}" for source in sources),
        " * Audit arch values, syscall names per arch (kernel uapi headers, cross-checked with",
        " * libaudit) and audit record type names (libaudit and linux/audit.h). */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <string.h>",
        "",
        '#include "core.h"',
        "",
        "#define COUNT(a) (sizeof(a) / sizeof((a)[0]))",
        "",
    ]
    for arch in ARCHES:
        out.append(f"#define ARCH_{arch.name.upper()} {arch.audit_arch:#010x}u")
    out += [
        "",
        "const char *am_arch_name(uint32_t arch)",
        "{",
        "    switch (arch) {",
    ]
    for arch in ARCHES:
        out.append(f'    case ARCH_{arch.name.upper()}: return "{arch.name}";')
    out += ["    default: return NULL;", "    }", "}", ""]

    # Syscalls: the names of all arches once, a dense uint16_t offset array per arch.
    pool = Pool("syscall_names", "s_")
    for arch in ARCHES:
        for number in sorted(syscalls[arch.name]):
            pool.add(syscalls[arch.name][number])
    out += pool.emit("syscall_names", "Syscall names")
    out += ["", "#define SYS(name) offsetof(struct syscall_names, s_##name)"]
    for arch in ARCHES:
        table = syscalls[arch.name]
        out += ["", f"/* {arch.name}: name offset by syscall number, 0 when there is none. */",
                f"static const uint16_t syscalls_{arch.name}[{max(table) + 1}] = {{"]
        out += [f"    [{number}] = SYS({table[number]})," for number in sorted(table)]
        out.append("};")
    out += [
        "",
        "const char *am_syscall_name(uint32_t arch, uint32_t nr)",
        "{",
        "    const uint16_t *table;",
        "    size_t count;",
        "    switch (arch) {",
    ]
    for arch in ARCHES:
        out += [
            f"    case ARCH_{arch.name.upper()}:",
            f"        table = syscalls_{arch.name};",
            f"        count = COUNT(syscalls_{arch.name});",
            "        break;",
        ]
    out += [
        "    default:",
        "        return NULL;",
        "    }",
        "    if (nr >= count || table[nr] == 0)",
        "        return NULL;",
        "    return (const char *)&syscall_names + table[nr];",
        "}",
        "",
    ]

    # Record types: the names, a table sorted by name (bytewise, a prefix first) for the binary
    # search in am_record_type_number, and a dense index by number for am_record_type_name.
    by_name = sorted(records.items(), key=lambda item: item[1].encode())
    rpool = Pool("record_names", "r_")
    for _, name in by_name:
        rpool.add(name)
    base, top = min(records), max(records)
    index_type = "uint8_t" if len(by_name) < 0xFF else "uint16_t"
    longest = max(len(name) for name in records.values())
    out += rpool.emit("record_names", "Record type names")
    out += [
        "",
        "struct record_type {",
        "    uint16_t name; /* offset in record_names */",
        "    uint8_t len;",
        "    uint16_t number;",
        "};",
        "",
        "#define REC(name, number) \\",
        "    {offsetof(struct record_names, r_##name), \\",
        "     sizeof(((const struct record_names *)0)->r_##name) - 1, (number)}",
        f"#define RECORD_NAME_MAX {longest}u",
        f"#define RECORD_BASE {base}u",
        "",
        "/* Sorted by name, bytewise, a name before any longer name it is a prefix of. */",
        f"static const struct record_type record_types[{len(by_name)}] = {{",
    ]
    position = {}
    for i, (number, name) in enumerate(by_name):
        position[number] = i
        out.append(f"    REC({name}, {number}),")
    out += [
        "};",
        "",
        "/* 1 + the record_types index of each number from RECORD_BASE, 0 when unknown. */",
        f"static const {index_type} record_index[{top - base + 1}] = {{",
    ]
    for number in sorted(records):
        out.append(f"    [{number} - RECORD_BASE] = {position[number] + 1}, "
                   f"/* {records[number]} */")
    out += [
        "};",
        "",
        "const char *am_record_type_name(uint32_t type)",
        "{",
        "    if (type < RECORD_BASE || type - RECORD_BASE >= COUNT(record_index))",
        "        return NULL;",
        "    unsigned i = record_index[type - RECORD_BASE];",
        "    return i == 0 ? NULL : (const char *)&record_names + record_types[i - 1].name;",
        "}",
        "",
        "/* Binary search: about eight short memcmp calls for the ~200 names. */",
        "int am_record_type_number(const char *name, size_t len)",
        "{",
        "    if (name == NULL || len == 0 || len > RECORD_NAME_MAX)",
        "        return -1;",
        "    const char *names = (const char *)&record_names;",
        "    size_t lo = 0, hi = COUNT(record_types);",
        "    while (lo < hi) {",
        "        size_t mid = lo + (hi - lo) / 2;",
        "        const struct record_type *t = &record_types[mid];",
        "        int c = memcmp(name, names + t->name, len < t->len ? len : t->len);",
        "        if (c == 0)",
        "            c = (len > t->len) - (len < t->len);",
        "        if (c == 0)",
        "            return t->number;",
        "        if (c < 0)",
        "            hi = mid;",
        "        else",
        "            lo = mid + 1;",
        "    }",
        "    return -1;",
        "}",
        "",
    ]
    return "\n".join(out)


def render_names(syscalls: dict[str, dict[int, str]], records: dict[int, str],
                 libaudit_syscalls: dict[str, dict[int, str]], sources: list[str]) -> str:
    """tests/oracle/audit_names.py: the tables of render() as Python dicts."""

    def table(name: str, items: dict[int, str], hex_keys: bool = False) -> list[str]:
        lines = [f"{name}: dict[int, str] = {{"]
        lines += [f'    {f"0x{key:08X}" if hex_keys else key}: "{items[key]}",'
                  for key in sorted(items)]
        return [*lines, "}"]

    out = [
        '"""Audit record type and syscall names for the pure-Python reference parser.',
        "",
        "GENERATED by native/gen_tables.py (do not edit), with native/audit_tables.c, from:",
        *(f"  {source}" for source in sources),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "# record type number -> name (what `type=` says)",
        *table("RECORD_TYPES", records),
        "",
        "# AUDIT_ARCH_* value -> the agent's arch name",
        *table("ARCHES", {arch.audit_arch: arch.name for arch in ARCHES}, hex_keys=True),
        "",
    ]
    for arch in ARCHES:
        header, libaudit = syscalls[arch.name], libaudit_syscalls[arch.name]
        out.append(f"# {arch.name} syscall number -> name (kernel uapi headers)")
        out += [f"# {number}: ausyscall says {libaudit[number]}, "
                f"header {header.get(number, 'no name')}"
                for number in sorted(libaudit) if header.get(number) != libaudit[number]]
        out += table(f"SYSCALLS_{arch.name.upper()}", header)
        out.append("")
    out += ["# arch name -> its syscall table", "SYSCALLS: dict[str, dict[int, str]] = {"]
    out += [f'    "{arch.name}": SYSCALLS_{arch.name.upper()},' for arch in ARCHES]
    out.append("}")
    return "\n".join(out) + "\n"


def generate() -> dict[Path, str]:
    try:
        audit = importlib.import_module("audit")
    except ImportError as exc:
        raise GenError("no `audit` module: run with Debian's /usr/bin/python3 and "
                       "python3-audit installed") from exc
    problems = []
    arch_values = header_arch_values()
    for arch in ARCHES:
        if arch_values.get(arch.macro) != arch.audit_arch:
            problems.append(f"{arch.macro} is {arch_values.get(arch.macro)}, "
                            f"expected {arch.audit_arch:#x}")
    syscalls = {}
    libaudit_syscalls = {}
    for arch in ARCHES:
        header = header_syscalls(arch)
        libaudit_syscalls[arch.name] = audit_syscalls(audit, arch)
        problems += merge_syscalls(arch, header, libaudit_syscalls[arch.name])
        syscalls[arch.name] = header
    if problems:
        raise GenError("syscall tables disagree (update KNOWN_AUDIT_DIFFERENCES only after "
                       "checking the kernel source):\n  " + "\n  ".join(problems))
    records = merge_record_types(header_record_types(), audit_record_types(audit))
    sources = package_versions(list(SOURCE_PACKAGES))
    return {C_TABLES: render(syscalls, records, sources),
            PY_NAMES: render_names(syscalls, records, libaudit_syscalls, sources)}


SOURCE_PACKAGES = ("python3-audit", "linux-libc-dev", "linux-libc-dev-arm64-cross",
                   "linux-libc-dev-armhf-cross")
# A "package version" provenance line of either output.
PROVENANCE = re.compile(rf"^(?: \* |)  ({'|'.join(map(re.escape, SOURCE_PACKAGES))}) .*$",
                        re.MULTILINE)


def without_versions(text: str) -> str:
    """The output with its source package versions left out: Debian moves linux-libc-dev with
    every kernel point release while the tables stay the same, and --check is about tables."""
    return PROVENANCE.sub(r"\1", text)


def stale_summary(path: Path, committed: str, fresh: str) -> str:
    """What differs, in a few lines: counts and the start of a unified diff."""
    diff = list(difflib.unified_diff(committed.splitlines(), fresh.splitlines(),
                                     f"{path} (committed)", f"{path} (generated)", lineterm="",
                                     n=1))
    removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
    added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
    shown = diff[:40]
    if len(diff) > len(shown):
        shown.append(f"... {len(diff) - len(shown)} more diff lines")
    summary = (f"{path} is stale: the generator writes {added} lines the committed file lacks "
               f"and drops {removed} of its lines")
    return "\n".join([summary, *shown])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=REPO,
                        help="repository to write or check (default: this one)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them; "
                             "exit 1, with a diff summary, if any is stale")
    args = parser.parse_args(argv)
    try:
        outputs = generate()
    except GenError as exc:
        print(f"gen_tables: {exc}", file=sys.stderr)
        return 2
    stale = []
    for path, text in outputs.items():
        target = args.root / path
        if not args.check:
            target.write_text(text)
            continue
        try:
            committed = target.read_text()
        except OSError as exc:
            print(f"gen_tables: {exc}", file=sys.stderr)
            return 2
        if without_versions(committed) != without_versions(text):
            stale.append(stale_summary(path, without_versions(committed),
                                       without_versions(text)))
    if stale:
        print("\n\n".join(stale), file=sys.stderr)
        print("gen_tables: rerun /usr/bin/python3 native/gen_tables.py and commit its output",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
