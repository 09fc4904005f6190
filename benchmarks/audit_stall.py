"""scripts/bench audit-stall: the agent as audit owner, SIGSTOPped for 10 minutes at full size
(Audit_BacklogLimit 8192, a 4 MiB socket buffer) while this process execs /bin/true back to
back; prints the exec rate with no agent, with the agent running, during the stop (per minute)
and, for comparison, during a shorter stop with the kernel's default backlog_wait_time put back
(what the agent replaced with 0), with what the kernel lost and how long tasks slept in it.

Root, auditctl, and the kernel's audit state to itself (nothing else using audit meanwhile). The audit state is checked to be as it was at the end.

    python3 benchmarks/audit_stall.py [--stop-seconds 600] [--compare-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRUE = "/bin/true"
QUIET = {name: True for name in (
    "SystemInformation_Disabled", "Baseline_Disabled", "SBoM_Disabled", "LocalUsers_Disabled",
    "Firewall_Disabled", "ListeningPorts_Disabled", "Heartbeat_Disabled", "Statistics_Disabled",
    "Login_Disabled", "NetworkActivity_Disabled")}


def status() -> dict[str, int]:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    return {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines())
            if len(p) >= 2 and p[1].isdigit()}


def rules() -> str:
    return subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout


def exec_rate(seconds: float) -> float:
    count = 0
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        pid = os.posix_spawn(TRUE, [TRUE], {})
        os.waitpid(pid, 0)
        count += 1
    return count / (time.monotonic() - start)


def stop_phase(proc: subprocess.Popen[bytes], seconds: float, slice_s: float,
               label: str, no_agent: float) -> None:
    before = status()
    os.kill(proc.pid, signal.SIGSTOP)
    rates = []
    try:
        left = seconds
        while left > 0:
            rates.append(exec_rate(min(slice_s, left)))
            left -= slice_s
    finally:
        after = status()
        os.kill(proc.pid, signal.SIGCONT)
    mean = sum(rates) / len(rates)
    print(f"{label}: {seconds:.0f} s stopped, exec/s {mean:.0f} ({mean / no_agent:.2f}x of no "
          f"agent; slices {', '.join(f'{r:.0f}' for r in rates)}); kernel lost "
          f"{after['lost'] - before['lost']} records; tasks slept "
          f"{after['backlog_wait_time_actual'] - before['backlog_wait_time_actual']} jiffies "
          f"in the kernel; backlog at the end {after['backlog']}/{after['backlog_limit']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stop-seconds", type=float, default=600)
    ap.add_argument("--compare-seconds", type=float, default=60,
                    help="a second stop with the kernel's default backlog_wait_time (0: none)")
    ap.add_argument("--baseline-seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=8192)
    ap.add_argument("--rcvbuf", type=int, default=4 << 20)
    args = ap.parse_args()
    found = status()
    if found["pid"]:
        print(f"audit is owned by pid {found['pid']}: not measured", file=sys.stderr)
        return 2
    state_before = {k: v for k, v in found.items()
                    if k not in ("lost", "backlog", "backlog_wait_time_actual")}
    rules_before = rules()
    exec_rate(1)
    no_agent = exec_rate(args.baseline_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        data, config = Path(tmp) / "data", Path(tmp) / "config.json"
        config.write_text(json.dumps({**QUIET, "Process_Mode": 4,
                                      "Audit_BacklogLimit": args.backlog,
                                      "Audit_ReceiveBufferBytes": args.rcvbuf}))
        with open(Path(tmp) / "agent.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data),
                 "--config", str(config)], stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while status()["pid"] != proc.pid or "iot-micro-agent" not in rules():
                if proc.poll() is not None or time.monotonic() > deadline:
                    print((Path(tmp) / "agent.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
            running = exec_rate(args.baseline_seconds)
            print(f"exec/s: no agent {no_agent:.0f}; agent running {running:.0f} "
                  f"({running / no_agent:.2f}x); buffers: backlog_limit {status()['backlog_limit']},"
                  f" socket {args.rcvbuf} bytes, backlog_wait_time "
                  f"{status()['backlog_wait_time']} (the agent's)")
            stop_phase(proc, args.stop_seconds, 60, "backlog_wait_time 0 (the agent's choice)",
                       no_agent)
            time.sleep(5)
            if args.compare_seconds > 0:
                subprocess.run(["auditctl", "--backlog_wait_time",
                                str(found["backlog_wait_time"])], capture_output=True, check=True)
                stop_phase(proc, args.compare_seconds, min(60, args.compare_seconds),
                           f"backlog_wait_time {found['backlog_wait_time']} (the kernel's)",
                           no_agent)
                time.sleep(5)
            doc = json.loads((data / "status.json").read_text())
            dropped = doc["reported"]["counters"]["dropped"]
            print(f"the agent's drops: {json.dumps(dropped, sort_keys=True)}; "
                  f"still the owner: {status()['pid'] == proc.pid}")
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    after = {k: v for k, v in status().items()
             if k not in ("lost", "backlog", "backlog_wait_time_actual")}
    if after != state_before or rules() != rules_before:
        print(f"audit state not restored: {after} vs {state_before}", file=sys.stderr)
        return 1
    print(f"exec/s with no agent afterwards {exec_rate(args.baseline_seconds):.0f}; audit "
          "state restored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
