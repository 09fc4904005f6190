"""Generate src/agent/audit_names.py: the record type and syscall name tables of the pure-Python
reference audit parser (src/agent/audit_reference.py).

Run once, by hand, on a Debian machine with `auditd` and `python3-audit` installed, with the
system interpreter (the one that can `import audit`):

    /usr/bin/python3 native/gen_reference_names.py > src/agent/audit_names.py

Sources:

* record types: libaudit's table (python3-audit's `audit_msg_type_to_name`, numbers 1000-2999,
  which is the name auditd writes in `type=`), plus the kernel's message types from
  /usr/include/linux/audit.h numbered 1100 and above that libaudit does not know yet (e.g.
  1338 DM_CTRL). The kernel's netlink control messages below 1100 (AUDIT_GET, AUDIT_ADD_RULE,
  ...) are not records and are left out, except those libaudit names (1005 USER, 1006 LOGIN).
  Where both name a number, libaudit's name wins.
* syscalls: the kernel's uapi asm/unistd.h of each arch, read through the C preprocessor
  (x86_64 and i386 from linux-libc-dev, aarch64 from linux-libc-dev-arm64-cross, arm EABI from
  linux-libc-dev-armhf-cross), aliases (a __NR_ defined as another __NR_) dropped. These are
  the names the C core's tables (native/gen_tables.py) use; where `ausyscall ARCH --dump`
  (libaudit) names a number differently, or names one the header does not have (arm OABI-only
  calls), the header wins and the difference is listed as a comment in the output.

The output is deterministic for given package versions; the header records them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

AUDIT_H = Path("/usr/include/linux/audit.h")

# AUDIT_ARCH_* values (linux/audit.h) of the four architectures the agent names.
ARCHES: dict[int, str] = {
    0xC000003E: "x86_64",
    0x40000003: "i386",
    0xC00000B7: "aarch64",
    0x40000028: "arm",
}


def libaudit_types() -> dict[int, str]:
    import audit  # type: ignore[import-not-found]  # python3-audit, system interpreter only

    out: dict[int, str] = {}
    for number in range(1000, 3000):
        name = audit.audit_msg_type_to_name(number)
        if name:
            out[number] = str(name)
    return out


def kernel_types() -> dict[int, str]:
    out: dict[int, str] = {}
    pattern = re.compile(r"#define\s+AUDIT_([A-Z0-9_]+)\s+(\d+)\b")
    for line in AUDIT_H.read_text().splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        name, number = match.group(1), int(match.group(2))
        if 1100 <= number <= 2999 and not name.startswith(("FIRST_", "LAST_")):
            out[number] = name
    return out


# cpp flags that select each arch's asm/unistd.h
CPP_FLAGS: dict[str, tuple[str, ...]] = {
    "x86_64": ("-I/usr/include/x86_64-linux-gnu", "-I/usr/include", "-D__x86_64__", "-D__LP64__"),
    "i386": ("-I/usr/include/x86_64-linux-gnu", "-I/usr/include", "-D__i386__"),
    "aarch64": ("-I/usr/aarch64-linux-gnu/include", "-D__aarch64__", "-D__LP64__"),
    "arm": ("-I/usr/arm-linux-gnueabihf/include", "-D__arm__", "-D__ARM_EABI__"),
}

# __NR_ macros that are not syscalls
NOT_SYSCALLS = {
    "syscalls",
    "arch_specific_syscall",
    "SYSCALL_BASE",
    "SYSCALL_MASK",
    "OABI_SYSCALL_BASE",
}


def cpp(arch: str, source: str, *extra: str) -> str:
    argv = ["cpp", "-undef", "-nostdinc", *extra, *CPP_FLAGS[arch], "-"]
    return subprocess.run(argv, input=source, check=True, capture_output=True, text=True).stdout


def eval_int(expr: str) -> int:
    """A preprocessed __NR_ value: decimal or hex numbers, '+', parentheses, spaces."""
    tokens = re.findall(r"0[xX][0-9a-fA-F]+|[0-9]+|[()+]|\s+|.", expr)
    total = 0
    for token in tokens:
        if token.isspace() or token in "()+":
            continue
        if not re.fullmatch(r"0[xX][0-9a-fA-F]+|[0-9]+", token):
            raise ValueError(f"cannot evaluate {expr!r}")
        total += int(token, 0)
    return total


def header_syscalls(arch: str) -> dict[int, str]:
    defines = cpp(arch, "#include <asm/unistd.h>\n", "-dM")
    names: list[str] = []
    for match in re.finditer(r"^#define __NR_(\w+)[ \t]+(.*)$", defines, re.MULTILINE):
        name, body = match.group(1), match.group(2).strip()
        if name not in NOT_SYSCALLS and not re.fullmatch(r"__NR_\w+", body):
            names.append(name)
    probe = "#include <asm/unistd.h>\n" + "".join(f"@{n}@ __NR_{n}\n" for n in sorted(names))
    out: dict[int, str] = {}
    for match in re.finditer(r"^@(\w+)@ (.*)$", cpp(arch, probe, "-P"), re.MULTILINE):
        number = eval_int(match.group(2))
        if number in out:
            raise ValueError(f"{arch}: {number} is both {out[number]} and {match.group(1)}")
        out[number] = match.group(1)
    if len(out) != len(names) or not out:
        raise ValueError(f"{arch}: {len(names)} __NR_ macros but {len(out)} values")
    return out


def ausyscall(arch: str) -> dict[int, str]:
    text = subprocess.run(
        ["ausyscall", arch, "--dump"], check=True, capture_output=True, text=True
    ).stdout
    out: dict[int, str] = {}
    for line in text.splitlines()[1:]:  # the first line says which table is used
        number, name = line.split("\t")
        out[int(number)] = name
    return out


def dpkg_version(package: str) -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        check=False,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or "unknown"


def emit_dict(name: str, annotation: str, items: dict[int, str], key_hex: bool = False) -> str:
    lines = [f"{name}: {annotation} = {{"]
    for key in sorted(items):
        shown = f"0x{key:08X}" if key_hex else str(key)
        lines.append(f'    {shown}: "{items[key]}",')
    lines.append("}")
    return "\n".join(lines)


def main() -> None:
    auditd = dpkg_version("auditd")
    types = kernel_types()
    types.update(libaudit_types())
    parts = [
        '"""Audit record type and syscall names for the pure-Python reference parser.',
        "",
        f"GENERATED by native/gen_reference_names.py (do not edit) from auditd {auditd},",
        f"python3-audit {dpkg_version('python3-audit')}, linux-libc-dev {dpkg_version('linux-libc-dev')},",
        f"linux-libc-dev-arm64-cross {dpkg_version('linux-libc-dev-arm64-cross')} and",
        f"linux-libc-dev-armhf-cross {dpkg_version('linux-libc-dev-armhf-cross')}.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "# record type number -> name (what `type=` says)",
        emit_dict("RECORD_TYPES", "dict[int, str]", types),
        "",
        "# AUDIT_ARCH_* value -> the agent's arch name",
        emit_dict("ARCHES", "dict[int, str]", ARCHES, key_hex=True),
        "",
    ]
    for arch in ARCHES.values():
        table = header_syscalls(arch)
        libaudit = ausyscall(arch)
        const = "SYSCALLS_" + arch.upper()
        parts.append(f"# {arch} syscall number -> name (kernel uapi headers)")
        for number in sorted(libaudit):
            if table.get(number) != libaudit[number]:
                theirs = table.get(number, "no name")
                parts.append(f"# {number}: ausyscall says {libaudit[number]}, header {theirs}")
        parts.append(emit_dict(const, "dict[int, str]", table))
        parts.append("")
    parts.append("# arch name -> its syscall table")
    parts.append("SYSCALLS: dict[str, dict[int, str]] = {")
    for arch in ARCHES.values():
        parts.append(f'    "{arch}": SYSCALLS_{arch.upper()},')
    parts.append("}")
    sys.stdout.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
