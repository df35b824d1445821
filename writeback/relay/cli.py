"""`writeback-relay`: the relay agent's command line.

Thin: parse arguments, load the configuration, call one function, map the result to an exit code.
Configuration errors are printed as one line naming the setting, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from writeback import __version__
from writeback.errors import ConfigurationError, KeyStoreError
from writeback.relay import bootstrap, doctor
from writeback.relay.config import Config
from writeback.relay.journal import Journal
from writeback.relay.keys import KeyStore, render
from writeback.relay.settings import DirectorySettings
from writeback.relay.status import healthy, read_status, status_path
from writeback.relay.status import render as render_status

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2


def load_directory_settings(path: Path) -> DirectorySettings:
    try:
        with path.open("rb") as handle:
            config = tomllib.load(handle)
    except OSError as exc:
        raise ConfigurationError("--config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError("--config", f"{path} is not valid TOML: {exc}") from exc
    section = config.get("directory")
    if not isinstance(section, dict):
        raise ConfigurationError("directory", f"missing [directory] table in {path}")
    return DirectorySettings.from_mapping(section)


def _doctor(args: argparse.Namespace) -> int:
    settings = load_directory_settings(args.config)
    with args.config.open("rb") as handle:
        full = "relay" in tomllib.load(handle)
    config = Config.load(args.config) if full else None
    attempts = config.relay.change_attempts if config is not None else None
    checks = doctor.diagnose(settings, settings.bind_password(), change_attempts=attempts)
    if config is not None:  # a whole relay.toml: also keys, journal, cloud keys and Service Bus
        checks += asyncio.run(doctor.diagnose_relay(config))
    print(doctor.render(checks))
    return EXIT_PROBLEM if any(c.level is doctor.Level.FAIL for c in checks) else EXIT_OK


def _keys_init(args: argparse.Namespace) -> int:
    print(render(KeyStore.init(args.dir, args.relay_id).keys()))
    return EXIT_OK


def _keys_export(args: argparse.Namespace) -> int:
    print(json.dumps(KeyStore(args.dir).public_jwks(), indent=2))
    return EXIT_OK


def _keys_list(args: argparse.Namespace) -> int:
    print(render(KeyStore(args.dir).keys()))
    return EXIT_OK


def _keys_rotate(args: argparse.Namespace) -> int:
    print(render(KeyStore(args.dir).rotate()))
    return EXIT_OK


def _keys_activate(args: argparse.Namespace) -> int:
    print(render(KeyStore(args.dir).activate()))
    return EXIT_OK


def _keys_remove(args: argparse.Namespace) -> int:
    KeyStore(args.dir).remove(args.kid)
    print(f"removed {args.kid}")
    return EXIT_OK


KEYS_COMMANDS = {
    "init": (_keys_init, "create the key directory with one active enc + sig pair"),
    "export": (_keys_export, "print the public JWKS (active and pending keys) to register"),
    "list": (_keys_list, "show every key: kid, use, alg, status, created"),
    "rotate": (_keys_rotate, "add a pending enc + sig pair"),
    "activate": (_keys_activate, "make the pending pair active and retire the active pair"),
    "remove": (_keys_remove, "delete one retired key"),
}


def _add_keys_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage the relay's encryption and signing keys")
    actions = keys.add_subparsers(dest="action", required=True)
    for name, (run, summary) in KEYS_COMMANDS.items():
        action = actions.add_parser(name, help=summary, description=summary)
        action.add_argument("--dir", type=Path, required=True, help="the relay's key directory")
        if name == "init":
            action.add_argument("--relay-id", required=True, help="1-64 of A-Z a-z 0-9 - _")
        if name == "remove":
            action.add_argument("kid", help="the kid of a retired key (see 'keys list')")
        action.set_defaults(run=run)


def _run(args: argparse.Namespace) -> int:
    bootstrap.configure_logging()
    relay = bootstrap.build(Config.load(args.config))
    return asyncio.run(_serve(relay))


async def _serve(relay: bootstrap.Relay) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if sys.platform == "win32":
        # The proactor loop has no add_signal_handler. A Windows service wrapper (WinSW) stops
        # the relay with Ctrl+C, which Python sees as SIGINT; Ctrl+Break is SIGBREAK.
        def request_stop(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(stop.set)

        for signum in (signal.SIGINT, signal.SIGBREAK):
            signal.signal(signum, request_stop)
    else:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    try:
        await relay.agent.run(stop)
    finally:
        await relay.close()
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    status = read_status(status_path(config.relay.journal))
    journal = Journal(config.relay.journal)
    try:
        counts = journal.counts()
    finally:
        journal.close()
    print(render_status(status, counts, config.relay.heartbeat_interval))
    return (
        EXIT_OK if healthy(status, config.relay.heartbeat_interval, time.time()) else EXIT_PROBLEM
    )


def build_parser() -> argparse.ArgumentParser:
    """Every command of writeback-relay; `run` on the parsed arguments runs the one given."""
    parser = argparse.ArgumentParser(prog="writeback-relay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("run", help="serve the domain's writeback requests")
    serve.add_argument("--config", type=Path, required=True, help="relay.toml")
    serve.set_defaults(run=_run)
    state = commands.add_parser("status", help="what the relay is doing; exit 1 if unhealthy")
    state.add_argument("--config", type=Path, required=True, help="relay.toml")
    state.set_defaults(run=_status)
    check = commands.add_parser("doctor", help="check TLS, bind, rights, policy hints, clock")
    check.add_argument("--config", type=Path, required=True, help="relay.toml")
    check.set_defaults(run=_doctor)
    _add_keys_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigurationError as exc:
        print(f"writeback-relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyStoreError as exc:
        print(f"writeback-relay: refused: {exc}", file=sys.stderr)
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
