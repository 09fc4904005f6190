"""The capabilities the collectors use (docs/operations.md, "Capabilities"), which of them this
process holds, and the words a collector's state uses for what it cannot see without one.

The service runs as a user of its own with six ambient capabilities; an administrator may
remove any of them (or run the agent with fewer). A collector then degrades (another source,
a field left out, or unavailable) and its state says why, naming the capability, e.g.
"exe and cwd of other users' processes unavailable: no CAP_SYS_PTRACE". Capabilities do not
change while the agent runs, so they are read once.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Mapping

# The capabilities the collectors use, by number (linux/capability.h).
CAPABILITY_NUMBERS = {
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_PTRACE": 19,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_AUDIT_READ": 37,
}

# What a refusal means, by errno, when the capability is missing: files and directories
# of other users (EACCES), netlink requests the kernel keeps for CAP_NET_ADMIN (EPERM).
READ_REFUSED = {errno.EACCES: "CAP_DAC_READ_SEARCH"}
NETLINK_REFUSED = {errno.EPERM: "CAP_NET_ADMIN"}


@functools.cache
def effective() -> frozenset[str]:
    """The capabilities of CAPABILITY_NUMBERS in this process's effective set."""
    mask = 0
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    mask = int(line.split()[1], 16)
                    break
    except (OSError, ValueError):
        mask = 0
    return frozenset(name for name, bit in CAPABILITY_NUMBERS.items() if mask >> bit & 1)


def lacking(*capabilities: str) -> list[str]:
    """Those of `capabilities` this process does not hold, in the order given."""
    held = effective()
    return [cap for cap in capabilities if cap not in held]


def unavailable_without(what: str, *capabilities: str) -> str:
    """"WHAT unavailable: no CAP_X" when any of `capabilities` (each needed) is missing, else
    the empty string."""
    missing = lacking(*capabilities)
    if not missing:
        return ""
    return f"{what} unavailable: no {' and no '.join(missing)}"


def explain_refusal(message: str, errno_value: int | None = None,
                    refusals: Mapping[int, str] = READ_REFUSED) -> str:
    """A refusal's message with the capability that would have allowed it, when this process
    lacks it: "/etc/shadow: Permission denied" -> "...: Permission denied (no
    CAP_DAC_READ_SEARCH)". `refusals` says which errno means which capability for the caller;
    the errno is given, or recognised by its text in the message (the inventory's errors are
    text); other messages come back unchanged."""
    for number, capability in refusals.items():
        refused = errno_value == number if errno_value is not None else (
            os.strerror(number) in message)
        if refused and lacking(capability):
            return f"{message} (no {capability})"
    return message
