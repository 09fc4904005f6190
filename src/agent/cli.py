"""micro-agent: the command line."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from agent import __version__
from agent.clock import wall_ms

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
        f"parse-audit: {s.records} records, {s.events} events, "
        f"{parser.sink.stats().batches} batches, "
        f"lost {s.gaps} (serial gaps), {s.duplicates} duplicate serials, "
        f"{s.malformed} malformed lines, {s.long_lines} long lines, "
        f"{s.truncated} truncated events",
        file=sys.stderr,
    )
    return 0


def _setup_logging(level: str) -> None:
    import logging

    from agent.service import log_handler

    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[log_handler(sys.stderr)])


def _agent_id(data_dir: Path) -> str:
    """A random id made at the first start and kept in DATA/agent-id."""
    path = data_dir / "agent-id"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    # uuid (with platform: about 1.7 MB of RSS) only at the first start, which makes the id.
    import uuid

    from agent.durable import replace_file

    ident = str(uuid.uuid4())
    replace_file(path, (ident + "\n").encode(), tmp=path.with_suffix(".tmp"), mode=0o644)
    return ident


def run(args: argparse.Namespace) -> int:
    import logging

    from agent.native.heap import return_freed_memory

    # First, before any thread starts (mallopt must not race other threads' allocations):
    # without it glibc keeps large freed buffers in the heap, about 1.3 MB of settled RSS.
    return_freed_memory()
    from agent.collectors import Environment, build_collectors
    from agent.config import ConfigStore
    from agent.config.local import LocalSettingError, load_dps_files, load_transport
    from agent.envelope import Identity
    from agent.outbox import Outbox, OutboxBusy
    from agent.pipeline import Agent, install_signal_handlers
    from agent.service import Notifier, link_status, runtime_dir, status_path
    from agent.uplink.files import LocalDelivery
    from agent.uplink.identity import HubIdentity, IdentityError, load_identity
    from agent.uplink.provisioning import DpsSettings, Provisioner

    _setup_logging(args.log_level)
    log = logging.getLogger("agent")

    def load_hub() -> tuple[HubIdentity | None, str]:
        return load_identity(args.connection_string_file, args.ca_file, args.x509_cert_file,
                             args.x509_key_file)

    try:
        # DPS, when an ID scope is configured, else the connection string's sources
        # (docs/uplink.md, "Where the identity comes from").
        dps = DpsSettings.load(args.dps_id_scope, args.dps_registration_id, args.dps_endpoint,
                               args.dps_symmetric_key_file, args.dps_group_key_file,
                               args.x509_cert_file, args.x509_key_file, args.ca_file,
                               local=load_dps_files(args.config))
        if dps is not None and args.connection_string_file is not None:
            raise IdentityError("--connection-string-file and DPS (an ID scope) are both "
                                "configured: choose one")
        if dps is None:
            hub, hub_why = load_hub()
        else:
            hub, hub_why = None, f"provisioned through {dps.describe()}"
    except (IdentityError, LocalSettingError) as err:
        log.error("IoT Hub identity: %s", err)
        print(f"micro-agent: {err}", file=sys.stderr)
        return 2
    try:
        transport = load_transport(args.config, protocol=args.transport_protocol,
                                   proxy=args.proxy, proxy_password_file=args.proxy_password_file)
    except LocalSettingError as err:
        log.error("IoT Hub transport: %s", err)
        print(f"micro-agent: {err}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
    except OSError as err:
        log.error("cannot use the data directory %s: %s", data_dir, err)
        return 2
    status_file = status_path(data_dir, runtime_dir(args.runtime_dir))
    if status_file.parent != data_dir:
        try:
            status_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.error("cannot use the runtime directory %s: %s", status_file.parent, err)
            return 2
        link_status(data_dir, status_file)
    store = ConfigStore(args.config)
    for name in store.latest_invalid_fields:
        log.warning("config: %s is invalid: %s", name, store.invalid_reasons.get(name, ""))
    config = store.config
    provisioner: Provisioner | None = None
    if dps is not None:
        provisioner = Provisioner(dps, data_dir)
        stored = provisioner.stored()
        if stored is not None:
            hub = provisioner.identity(stored)
            hub_why += f" (the assignment stored in {provisioner.path})"
    if hub is not None:  # the envelope names the identity the hub knows
        ident = Identity(agent=_agent_id(data_dir), ver=__version__, dev=hub.device_id,
                         mod=hub.module_id or "")
    elif dps is not None:  # not provisioned yet: DPS makes the device id from it
        ident = Identity(agent=_agent_id(data_dir), ver=__version__, dev=dps.registration_id,
                         mod="")
    else:
        ident = Identity(agent=_agent_id(data_dir), ver=__version__, dev=socket.gethostname(),
                         mod="iot-micro-agent")
    try:
        outbox = Outbox(data_dir, config.outbox.max_bytes,
                        config.iothub_module.message_timeout_minutes * 60)
    except OutboxBusy:
        log.error("another micro-agent is running with the data directory %s", data_dir)
        return 2
    env = Environment(data_dir=data_dir, root=Path(args.root))
    uplink: Any
    to_hub = hub is not None or provisioner is not None
    if not to_hub:
        uplink = LocalDelivery(data_dir / "delivered")
        where = f"{hub_why}: delivering batches to {uplink.describe()}"
    elif provisioner is not None:
        from agent.uplink.iothub import IotHubUplink

        uplink = IotHubUplink(hub, ident.agent, provisioner=provisioner, transport=transport)
        where = f"{hub_why}: sending batches to {uplink.describe()}"
    else:
        from agent.uplink.iothub import IotHubUplink

        assert hub is not None
        first: HubIdentity = hub

        def reload_hub() -> HubIdentity:
            return load_hub()[0] or first

        uplink = IotHubUplink(hub, ident.agent, reload_identity=reload_hub, transport=transport)
        where = f"{hub_why}: sending batches to {uplink.describe()}"
    agent = Agent(store, env, outbox, uplink, ident, build_collectors(env),
                  notifier=Notifier.from_environ(), status_file=status_file)
    install_signal_handlers(agent)
    log.info("micro-agent %s starting: data in %s, status in %s, %s", __version__, data_dir,
             status_file, where)
    if to_hub:
        uplink.attach(agent)
    rc = agent.run()
    if getattr(uplink, "abandoned", False):
        # Everything is stored and the status written; only a call to an unanswering hub is
        # left (the worker or a client's network thread inside it): do not wait for it.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(rc)
    return rc


# Exit codes of `micro-agent audit-restore` (also in its --help and docs/sources/audit-netlink.md).
RESTORE_DONE = 0  # restored and the record removed, or nothing was recorded
RESTORE_INCOMPLETE = 1  # the kernel refused or something still differs: the record is kept
RESTORE_CANNOT = 2  # the record is unreadable, or audit cannot be reached (no privilege)
RESTORE_AGENT_RUNNING = 3  # an agent runs with this data directory: nothing was done

RESTORE_EPILOG = f"""exit status: {RESTORE_DONE} restored and the record removed, or nothing \
recorded; {RESTORE_INCOMPLETE} not everything could be put back (the record is kept); \
{RESTORE_CANNOT} the record is unreadable or audit cannot be reached (the record is kept); \
{RESTORE_AGENT_RUNNING} an agent is running with this data directory (nothing done)"""


def audit_restore(args: argparse.Namespace) -> int:
    import errno
    import fcntl

    from agent.collectors.audit_state import AuditStateRecord, RecordError

    data_dir = Path(args.data_dir)
    record = AuditStateRecord(data_dir)
    if not record.exists():
        print(f"micro-agent audit-restore: nothing recorded in {data_dir}")
        return RESTORE_DONE
    # The running agent holds the outbox's lock; restoring under it would take its audit away.
    lock_fd = -1
    try:
        lock_fd = os.open(data_dir / "outbox" / "lock", os.O_RDWR | os.O_CLOEXEC)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        pass  # no outbox: no agent has run here since the record was written
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            print(f"micro-agent audit-restore: an agent is running with {data_dir}; stop it "
                  "first (it restores the audit state itself when it stops)", file=sys.stderr)
            return RESTORE_AGENT_RUNNING
        raise
    try:
        outcome = record.restore()
    except RecordError as err:
        print(f"micro-agent audit-restore: cannot read the record: {err}", file=sys.stderr)
        return RESTORE_CANNOT
    except OSError as err:
        print(f"micro-agent audit-restore: {err}", file=sys.stderr)
        return RESTORE_CANNOT
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    if outcome.ok:
        print(f"micro-agent audit-restore: {outcome.what}")
        return RESTORE_DONE
    print(f"micro-agent audit-restore: {outcome.what}", file=sys.stderr)
    return RESTORE_INCOMPLETE if outcome.reached else RESTORE_CANNOT


def _decode_one(path: Path, envelope: bool, out: BinaryIO) -> None:
    from agent.envelope import EnvelopeError, decode_envelope
    from agent.jsonl import batch_events, event_line
    from agent.outbox import BATCH_MAGIC, decode_batch_file

    data = path.read_bytes()
    if data[:4] == BATCH_MAGIC:
        data = decode_batch_file(data)[5]
    try:
        doc = decode_envelope(data)
        events = doc.pop("events")
        if envelope:
            out.write(event_line({"envelope": doc, "file": str(path)}))
    except EnvelopeError:
        events = batch_events(data)  # a bare batch of the core (parse-audit --format msgpack)
    out.writelines(event_line(event) for event in events)


def decode(args: argparse.Namespace) -> int:
    root = Path(args.path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".batch", ".msgpack"))
    else:
        files = [root]
    out = sys.stdout.buffer
    failed = 0
    try:
        for path in files:
            try:
                _decode_one(path, args.envelope, out)
            except (OSError, ValueError) as err:
                failed += 1
                print(f"micro-agent decode: {path}: {err}", file=sys.stderr)
        out.flush()
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    return 1 if failed else 0


def verify(args: argparse.Namespace) -> int:
    import json

    from agent.verify import Report, VerifyInputError, read_inputs, render
    from agent.verify import verify as check

    report = Report()
    try:
        check(read_inputs(args.source, sys.stdin.buffer, report.unreadable), report)
    except VerifyInputError as err:
        print(f"micro-agent verify: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=1) if args.json else render(report))
    return 0 if report.complete() else 1


def status(args: argparse.Namespace) -> int:
    import json

    from agent.service import runtime_dir, status_path

    path = status_path(Path(args.data_dir), runtime_dir(args.runtime_dir))
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        if path.is_symlink():
            # DATA/status.json led to a runtime directory that is gone (a reboot, or the
            # service stopped without RuntimeDirectoryPreserve=).
            gone = os.readlink(path)
            if args.json:
                print(json.dumps({"running": False, "alive": False, "status_file": gone}))
            else:
                print(f"micro-agent: not running; its status file {gone} is gone")
            return 3
        print(f"micro-agent status: no agent has run with the data directory {args.data_dir}",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"micro-agent status: cannot read {path}: {err}", file=sys.stderr)
        return 1
    try:
        if args.modules:
            print("\n".join(doc.get("modules", [])))
            return 0
        return _print_status(doc, args.json)
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def _print_status(doc: dict[str, Any], as_json: bool) -> int:
    import json

    alive = bool(doc.get("running"))
    if alive:
        try:
            os.kill(int(doc["pid"]), 0)
        except (OSError, KeyError, ValueError):
            alive = False
    if as_json:
        doc["alive"] = alive
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0 if alive else 3
    print(f"micro-agent {doc.get('version')}: "
          + (f"running (pid {doc.get('pid')})" if alive else "not running")
          + f"; status of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(doc.get('updated', 0)))}")
    cfg = doc.get("config", {})
    print(f"configuration: {cfg.get('latest_state')}"
          + (f", invalid: {', '.join(cfg['latest_invalid_fields'])}" if cfg.get("latest_invalid_fields") else ""))
    up = doc.get("uplink", {})
    if up.get("kind") == "iothub":
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(up.get("since", 0)))
        confirmed = up.get("last_confirmed")
        last = ("none yet" if up.get("last_seq") is None else
                f"seq {up.get('last_seq')} at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(confirmed or 0))}")
        print(f"uplink: IoT Hub {up.get('hub')} as {up.get('identity')} ({up.get('auth')}): "
              f"{up.get('state')} since {since}")
        print(f"uplink: delivered {up.get('delivered')} batches, last confirmed batch {last}, "
              f"in flight {up.get('in_flight')}, send errors {up.get('send_errors')}")
        if up.get("transport"):
            print(f"uplink: over {up['transport']}")
        change = up.get("identity_change")
        if isinstance(change, dict) and change.get("state") == "refused":
            print(f"uplink: a changed identity was not used: {change.get('reason')}")
    else:
        print(f"uplink: {up.get('kind')} {up.get('dir', '')} delivered {up.get('delivered')}, "
              f"last batch {up.get('last_seq')}")
    print(f"{'collector':<18} {'state':<12} {'source':<22} {'freq':<7} {'ev/s':>8} {'collected':>10} {'dropped':>8}")
    for name, c in doc.get("collectors", {}).items():
        counters = c.get("counters", {})
        dropped = sum(v for k, v in counters.items() if k.startswith(("dropped", "lost")))
        print(f"{name:<18} {c.get('state', ''):<12} {c.get('source', '')[:22]:<22} "
              f"{c.get('frequency', ''):<7} {c.get('events_per_s', 0):>8} "
              f"{counters.get('collected', 0):>10} {dropped:>8}")
        if c.get("reason"):
            print(f"{'':<18} {c['reason']}")
    ob = doc.get("outbox", {})
    depth = ob.get("depth", {})
    print("outbox: " + ", ".join(f"{p} {d['count']} batches {d['bytes']} B" for p, d in depth.items())
          + f"; counters {ob.get('counters')}")
    return 0 if alive else 3


class _ListLane:
    """A lane for one snapshot on the command line: batches are kept in a list."""

    def __init__(self) -> None:
        from agent.native.sink import EventSink

        self.sink = EventSink()
        self.batches: list[bytes] = []

    def spill(self, batches: list[bytes]) -> None:
        self.batches += batches


# What `micro-agent collect` takes: the periodic collectors, Login (its files' history),
# Process and Peripheral (what runs, what is plugged in now).
COLLECTABLE = ("SystemInformation", "LocalUsers", "Firewall", "SBoM", "Baseline",
               "ListeningPorts", "Login", "Process", "Heartbeat", "Peripheral")


def collect(args: argparse.Namespace) -> int:
    from agent.collectors import CLASSES, Environment
    from agent.collectors.login import read_history
    from agent.collectors.peripheral import snapshot as peripheral_snapshot
    from agent.collectors.process import snapshot as process_snapshot
    from agent.config import ConfigStore
    from agent.jsonl import batch_events, event_line

    _setup_logging(args.log_level)
    if args.name not in COLLECTABLE:
        print(f"micro-agent collect: {args.name!r} is not one of {', '.join(COLLECTABLE)}",
              file=sys.stderr)
        return 2
    lane = _ListLane()
    env = Environment(data_dir=Path(args.data_dir), root=Path(args.root))
    if args.name == "Login":
        read_history(env.root, lane)
    elif args.name == "Process":
        process_snapshot(lane)
    elif args.name == "Peripheral":
        peripheral_snapshot(env.root, lane)
    else:
        store = ConfigStore(args.config)
        collector = CLASSES[args.name](env)
        collector.configure(store.config)
        collector.lane = lane
        state = collector.start()
        if state.state != "running":
            print(f"micro-agent collect: {args.name} is {state.state}: {state.reason}",
                  file=sys.stderr)
            return 1
        try:
            collector.collect(wall_ms(), lane)
        finally:
            collector.stop()
    lane.spill(lane.sink.seal())
    out = sys.stdout.buffer
    try:
        for batch in lane.batches:
            for event in batch_events(batch):
                out.write(event_line(event))
        out.flush()
    except BrokenPipeError:
        sys.stderr.close()
    return 0


def _terminal_columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it: $COLUMNS, else stdout's."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
    except (ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter given its width: without one it imports shutil (with bz2 and lzma,
    about 2 MB of RSS that `micro-agent run` would keep) to ask the terminal's."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser, and the class of its sub-commands' parsers, with _HelpFormatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    top = _ArgumentParser(prog="micro-agent", description=__doc__)
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

    from agent.service import DEFAULT_DATA_DIR, default_data_dir

    def common(p: argparse.ArgumentParser, config: bool = True) -> None:
        p.add_argument("--data-dir", default=default_data_dir(),
                       help="outbox, state and local deliveries (default $STATE_DIRECTORY, "
                       f"else {DEFAULT_DATA_DIR})")
        if config:
            from agent.config import DEFAULT_CONFIG_PATH

            p.add_argument("--config", default=DEFAULT_CONFIG_PATH,
                           help=f"local configuration, twin names (default {DEFAULT_CONFIG_PATH})")
            p.add_argument("--log-level", default="info",
                           choices=["debug", "info", "warning", "error"])
            p.add_argument("--root", default="/", help=argparse.SUPPRESS)

    def runtime_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--runtime-dir", default=None, metavar="PATH",
                       help="where status.json is kept, a tmpfs such as /run/iot-micro-agent "
                       "(default $RUNTIME_DIRECTORY, else the data directory); DATA_DIR/"
                       "status.json then links to it")

    ru = sub.add_parser("run", help="run the agent",
                        description="Run the agent: collectors, outbox and uplink. With no IoT "
                        "Hub configured, batches are delivered to DATA_DIR/delivered.")
    common(ru)
    runtime_option(ru)
    from agent.uplink.identity import (
        DEFAULT_CONNECTION_STRING_FILE,
        ENV_CA_FILE,
        ENV_CERT_FILE,
        ENV_CONNECTION_STRING,
        ENV_KEY_FILE,
    )

    ru.add_argument("--connection-string-file", default=None, metavar="PATH",
                    help="the device or module connection string, in a file only its owner "
                    f"can read (else ${ENV_CONNECTION_STRING}, else "
                    f"{DEFAULT_CONNECTION_STRING_FILE} when it exists)")
    ru.add_argument("--ca-file", default=None, metavar="PATH",
                    help=f"trusted CA certificate(s), PEM, for a gateway or test hub (else ${ENV_CA_FILE})")
    ru.add_argument("--x509-cert-file", default=None, metavar="PATH",
                    help=f"X.509 device certificate, PEM, with x509=true in the connection string (else ${ENV_CERT_FILE})")
    ru.add_argument("--x509-key-file", default=None, metavar="PATH",
                    help=f"its private key, readable by its owner only (else ${ENV_KEY_FILE})")
    from agent.uplink.provisioning import (
        DEFAULT_GLOBAL_ENDPOINT,
        ENV_ENDPOINT,
        ENV_GROUP_KEY_FILE,
        ENV_ID_SCOPE,
        ENV_REGISTRATION_ID,
        ENV_SYMMETRIC_KEY_FILE,
    )

    ru.add_argument("--dps-id-scope", default=None, metavar="SCOPE",
                    help="provision through the Device Provisioning Service with this ID scope "
                    f"instead of a connection string (else ${ENV_ID_SCOPE})")
    ru.add_argument("--dps-registration-id", default=None, metavar="ID",
                    help=f"the registration id (else ${ENV_REGISTRATION_ID})")
    ru.add_argument("--dps-endpoint", default=None, metavar="HOST",
                    help=f"the DPS global endpoint (else ${ENV_ENDPOINT}, else "
                    f"{DEFAULT_GLOBAL_ENDPOINT})")
    ru.add_argument("--dps-symmetric-key-file", default=None, metavar="PATH",
                    help="an individual enrollment's key, base64, readable by its owner only "
                    f"(else ${ENV_SYMMETRIC_KEY_FILE}); with X.509 give --x509-cert-file and "
                    "--x509-key-file instead")
    ru.add_argument("--dps-group-key-file", default=None, metavar="PATH",
                    help="an enrollment group's key, base64, readable by its owner only: the "
                    f"device key is derived from it (else ${ENV_GROUP_KEY_FILE})")
    ru.add_argument("--transport-protocol", default=None, metavar="PROTOCOL",
                    help="MQTT (TCP 8883) or MQTT_WebSocket_Protocol (WebSockets on 443) (else "
                    "IothubModule_TransportProtocol of the local configuration, else MQTT)")
    ru.add_argument("--proxy", default=None, metavar="HOST,PORT[,USER]",
                    help="an HTTP CONNECT proxy (else IothubModule_ProxyConfig of the local "
                    "configuration); \"\" for none")
    ru.add_argument("--proxy-password-file", default=None, metavar="PATH",
                    help="the proxy user's password, in a file only its owner can read")
    ru.set_defaults(func=run)

    de = sub.add_parser("decode", help="print batch files as JSON lines",
                        description="Print the events of a batch file, an outbox or a delivery "
                        "directory as JSON lines.")
    de.add_argument("path", help="a .batch or .msgpack file, or a directory of them")
    de.add_argument("--envelope", action="store_true",
                    help="also print each batch's envelope (without its events) before them")
    de.set_defaults(func=decode)

    ve = sub.add_parser(
        "verify", help="check on the receiving side that a device's batches are complete",
        description="Read batches as they arrived at the back end (a delivery directory of the "
        "local default, envelope files, or messages saved from the hub's Event Hub-compatible "
        "endpoint as JSON lines; - for JSON lines on stdin) and report per device: batches, "
        "events by type, sequence gaps, duplicates, incomplete split batches, the drops the "
        "envelopes reported by reason, first and last time (docs/uplink.md, \"Checking what "
        "arrived\").",
        epilog="Exit status: 0 every batch between the first and the last arrived (or the "
        "envelopes say why not); 1 a batch is missing without a reported reason, a split batch "
        "lacks a part, a message could not be read, or nothing arrived; 2 an input does not "
        "exist.")
    ve.add_argument("source", nargs="+", help="a directory, a .msgpack envelope, a .jsonl file of saved messages, or -")
    ve.add_argument("--json", action="store_true", help="the report as one JSON document")
    ve.set_defaults(func=verify)

    st = sub.add_parser("status", help="show what the running agent is doing")
    common(st, config=False)
    runtime_option(st)
    st.add_argument("--json", action="store_true", help="the whole status document")
    st.add_argument("--modules", action="store_true",
                    help="the top-level Python modules the agent process has loaded, one a line")
    st.set_defaults(func=status)

    ar = sub.add_parser(
        "audit-restore", help="put back the kernel audit state a killed agent left changed",
        description="Put the kernel's audit state (enabled, failure, rate_limit, backlog_limit, "
        "backlog_wait_time, ownership, and the agent's own rules) back to what the agent "
        "recorded in DATA_DIR/audit-state.json before it changed it, and remove the record. "
        "Rules of others stay, in their order. A running agent, and the next start, do this "
        "themselves; this is for after a crash when the agent will not run again (the "
        "package's prerm, after stopping the service).",
        epilog=RESTORE_EPILOG)
    common(ar, config=False)
    ar.set_defaults(func=audit_restore)

    co = sub.add_parser("collect", help="print one snapshot of a collector as JSON lines")
    co.add_argument("name", help="the collector's twin prefix: " + ", ".join(COLLECTABLE)
                    + " (Login: the whole history of wtmp and btmp; Process: a `process` event"
                    " per running process)")
    common(co)
    co.set_defaults(func=collect)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
