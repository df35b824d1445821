"""The systemd unit agrees with the relay's command line."""

from __future__ import annotations

import configparser
from pathlib import Path

from writeback.relay import cli

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "writeback-relay.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


class TestSystemdUnit:
    def test_runs_the_relay_with_its_config(self) -> None:
        """ExecStart is `writeback-relay run --config ...`, as the CLI defines it."""
        command = unit()["Service"]["ExecStart"].split()
        assert command[0].endswith("/writeback-relay")
        assert command[1:3] == ["run", "--config"]

    def test_configuration_errors_are_not_restarted(self) -> None:
        """A configuration error (exit 2) stops the service instead of a restart loop."""
        assert unit()["Service"]["RestartPreventExitStatus"] == str(cli.EXIT_CONFIG)

    def test_stops_after_the_grace_period(self) -> None:
        """systemd waits longer than the relay's default shutdown grace before killing it."""
        assert int(unit()["Service"]["TimeoutStopSec"]) > 20

    def test_private_by_default(self) -> None:
        """Files the relay creates are owner-only and it runs unprivileged."""
        service = unit()["Service"]
        assert (service["UMask"], service["User"], service["NoNewPrivileges"]) == (
            "0077",
            "writeback",
            "yes",
        )
