"""`writeback-relay`: the relay agent's command line.

Thin: parse arguments, load the configuration, call one function, map the result to an exit code.
Configuration errors are printed as one line naming the setting, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from writeback.errors import ConfigurationError
from writeback.relay import doctor
from writeback.relay.settings import DirectorySettings

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
    checks = doctor.diagnose(settings, settings.bind_password())
    print(doctor.render(checks))
    return EXIT_PROBLEM if any(c.level is doctor.Level.FAIL for c in checks) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="writeback-relay", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("doctor", help="check TLS, bind, rights, policy hints, clock")
    check.add_argument("--config", type=Path, required=True, help="relay.toml")
    check.set_defaults(run=_doctor)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigurationError as exc:
        print(f"writeback-relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
