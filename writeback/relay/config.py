"""relay.toml: the whole relay configuration, read once and validated at start-up.

Every setting can also come from the environment as `WRITEBACK_<TABLE>_<KEY>` (for example
`WRITEBACK_RELAY_CONCURRENCY=8`, `WRITEBACK_DIRECTORY_SERVERS='["ldaps://dc1.corp.example.com"]'`):
the value is read as a TOML value, and as a plain string when it is not one. The environment wins
over the file. A bad or missing setting stops start-up with its name.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from writeback.errors import ConfigurationError
from writeback.protocol.messages import domain_problem
from writeback.relay.keys import validate_relay_id
from writeback.relay.settings import DirectorySettings
from writeback.transport.settings import ServiceBusSettings

ENV_PREFIX = "WRITEBACK_"
TABLES = ("relay", "directory", "servicebus")


@dataclass(frozen=True)
class RelaySettings:
    """The `[relay]` table: who this relay is and how it works."""

    id: str
    domain: str
    keys: Path
    journal: Path
    cloud_keys: Path
    concurrency: int = 4
    heartbeat_interval: float = 60.0
    shutdown_grace: float = 20.0
    receive_wait: float = 5.0
    change_attempts: int = 5  # wrong current passwords per user within change_window (0: off)
    change_window: float = 900.0

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> RelaySettings:
        known = {
            "id",
            "domain",
            "keys",
            "journal",
            "cloud_keys",
            "concurrency",
            "heartbeat_interval",
            "shutdown_grace",
            "receive_wait",
            "change_attempts",
            "change_window",
        }
        for key in table:
            if key not in known:
                raise ConfigurationError(f"relay.{key}", "unknown setting")
        for key in ("id", "domain", "keys", "journal", "cloud_keys"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise ConfigurationError(f"relay.{key}", "required, as a non-empty string")
        problem = domain_problem(table["domain"])
        if problem:
            raise ConfigurationError("relay.domain", problem)
        validate_relay_id(table["id"])
        concurrency = table.get("concurrency", 4)
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not (1 <= concurrency <= 64)
        ):
            raise ConfigurationError("relay.concurrency", "an integer from 1 to 64")
        attempts = table.get("change_attempts", 5)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= 100:
            raise ConfigurationError("relay.change_attempts", "an integer from 0 (off) to 100")
        return cls(
            id=table["id"],
            domain=table["domain"],
            keys=Path(table["keys"]),
            journal=Path(table["journal"]),
            cloud_keys=Path(table["cloud_keys"]),
            concurrency=concurrency,
            heartbeat_interval=_seconds(table, "heartbeat_interval", 60.0),
            shutdown_grace=_seconds(table, "shutdown_grace", 20.0),
            receive_wait=_seconds(table, "receive_wait", 5.0),
            change_attempts=attempts,
            change_window=_seconds(table, "change_window", 900.0),
        )


@dataclass(frozen=True)
class Config:
    relay: RelaySettings
    directory: DirectorySettings
    servicebus: ServiceBusSettings

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] = os.environ) -> Config:
        """Read relay.toml, overlay the environment, validate every table."""
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ConfigurationError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError("--config", f"{path} is not valid TOML: {exc}") from exc
        for name in document:
            if name not in TABLES:
                raise ConfigurationError(name, f"unknown table [{name}] in {path}")
        tables = {name: dict(document.get(name, {})) for name in TABLES}
        for variable, raw in environ.items():
            if not variable.startswith(ENV_PREFIX):
                continue
            table, _, key = variable[len(ENV_PREFIX) :].lower().partition("_")
            if table in tables and key and not _reserved(variable):
                tables[table][key] = _env_value(raw)
        return cls(
            relay=RelaySettings.from_mapping(tables["relay"]),
            directory=DirectorySettings.from_mapping(tables["directory"]),
            servicebus=ServiceBusSettings.from_mapping(tables["servicebus"], environ=environ),
        )


def _reserved(variable: str) -> bool:
    # Secrets read directly by their settings classes, not settings of their own.
    return variable in {
        "WRITEBACK_DIRECTORY_BIND_PASSWORD",
        "WRITEBACK_SERVICEBUS_PROXY_PASSWORD",
        "WRITEBACK_SERVICEBUS_CONNECTION_STRING",
    }


def _env_value(raw: str) -> object:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _seconds(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"relay.{key}", "must be a positive number of seconds")
    return float(value)
