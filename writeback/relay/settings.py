"""The relay's directory settings, read once and validated at start-up.

Every problem names the setting as the configuration file spells it (`directory.servers`), so an
administrator can fix it without reading code. Plain LDAP is refused here: a password must never
travel unencrypted, even to a DC that would accept it (Samba before 4.19 does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from writeback.errors import ConfigurationError
from writeback.relay import permissions

PASSWORD_ENV = "WRITEBACK_DIRECTORY_BIND_PASSWORD"  # noqa: S105 - the variable's name


@dataclass(frozen=True)
class ServerAddress:
    """One DC: host, port and whether TLS starts at connect (LDAPS) or by StartTLS."""

    url: str
    host: str
    port: int
    ldaps: bool


@dataclass(frozen=True)
class DirectorySettings:
    servers: tuple[ServerAddress, ...]
    ca_file: Path
    bind_user: str
    scopes: tuple[str, ...]
    base_dn: str | None = None
    denied_groups: tuple[str, ...] = ()
    allow_protected_reset: bool = False
    bind_password_file: Path | None = None
    connect_timeout: float = 5.0
    operation_timeout: float = 10.0

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, object], section: str = "directory"
    ) -> DirectorySettings:
        """Build from the `[directory]` table of relay.toml (or an equivalent mapping)."""
        known = {
            "servers",
            "start_tls",
            "ca_file",
            "bind_user",
            "bind_password_file",
            "base_dn",
            "scopes",
            "denied_groups",
            "allow_protected_reset",
            "connect_timeout",
            "operation_timeout",
        }
        for key in table:
            if key not in known:
                raise ConfigurationError(f"{section}.{key}", "unknown setting")
        start_tls = _bool(table, section, "start_tls", default=False)
        servers = tuple(
            _server(url, start_tls, f"{section}.servers")
            for url in _strings(table, section, "servers")
        )
        if not servers:
            raise ConfigurationError(f"{section}.servers", "list at least one domain controller")
        ca_file = Path(_string(table, section, "ca_file"))
        if not ca_file.is_file():
            raise ConfigurationError(f"{section}.ca_file", f"{ca_file} is not a readable file")
        scopes = _dns(table, section, "scopes")
        if not scopes:
            raise ConfigurationError(
                f"{section}.scopes", "list the OUs whose users writeback may manage"
            )
        base_dn = table.get("base_dn")
        if base_dn is not None:
            base_dn = _dns({"base_dn": [base_dn]}, section, "base_dn")[0]
        password_file = table.get("bind_password_file")
        return cls(
            servers=servers,
            ca_file=ca_file,
            bind_user=_string(table, section, "bind_user"),
            scopes=scopes,
            base_dn=base_dn,
            denied_groups=_dns(table, section, "denied_groups", required=False),
            allow_protected_reset=_bool(table, section, "allow_protected_reset", default=False),
            bind_password_file=Path(str(password_file)) if password_file else None,
            connect_timeout=_number(table, section, "connect_timeout", 5.0),
            operation_timeout=_number(table, section, "operation_timeout", 10.0),
        )

    def bind_password(self, environ: Mapping[str, str] = os.environ) -> str:
        """The service account's password, from its file (owner-only) or the environment."""
        if self.bind_password_file is None:
            password = environ.get(PASSWORD_ENV, "")
            if not password:
                raise ConfigurationError(
                    "directory.bind_password_file", f"not set, and {PASSWORD_ENV} is empty"
                )
            return password
        path = self.bind_password_file
        try:
            status = path.stat()
        except OSError as exc:
            raise ConfigurationError("directory.bind_password_file", f"cannot read {path}") from exc
        problem = permissions.problem(path, status, precise=False)
        if problem:
            raise ConfigurationError("directory.bind_password_file", problem)
        # utf-8-sig: a file written by Windows PowerShell may start with a byte-order mark.
        try:
            password = path.read_text(encoding="utf-8-sig").rstrip("\r\n")
        except UnicodeDecodeError:
            # Windows PowerShell 5.1's `>` and Out-File write UTF-16. The decoder's message
            # quotes a byte of the file, so it is not passed on.
            raise ConfigurationError(
                "directory.bind_password_file",
                f"{path} is not UTF-8 text (UTF-16, as PowerShell's > and Out-File write?): "
                "write it as UTF-8",
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                "directory.bind_password_file", f"cannot read {path}: {exc.strerror}"
            ) from None
        if not password:
            raise ConfigurationError("directory.bind_password_file", f"{path} is empty")
        return password


def _server(url: str, start_tls: bool, setting: str) -> ServerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("ldaps", "ldap") or not parts.hostname:
        raise ConfigurationError(setting, f"{url!r} is not an ldaps:// or ldap:// URL")
    if parts.scheme == "ldap" and not start_tls:
        raise ConfigurationError(
            setting,
            f"{url} is plain LDAP: use ldaps:// or set directory.start_tls = true "
            "(passwords are never sent unencrypted)",
        )
    ldaps = parts.scheme == "ldaps"
    return ServerAddress(url, parts.hostname, parts.port or (636 if ldaps else 389), ldaps)


def _string(table: Mapping[str, object], section: str, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{section}.{key}", "required, as a non-empty string")
    return value


def _strings(
    table: Mapping[str, object], section: str, key: str, *, required: bool = True
) -> list[str]:
    value = table.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(f"{section}.{key}", "required, as a list of strings")
    return value


def _dns(
    table: Mapping[str, object], section: str, key: str, *, required: bool = True
) -> tuple[str, ...]:
    """Distinguished names, checked for syntax now rather than at the first request."""
    values = _strings(table, section, key, required=required)
    for value in values:
        try:
            parse_dn(value)
        except LDAPInvalidDnError:
            raise ConfigurationError(
                f"{section}.{key}",
                f"{value!r} is not a distinguished name (like OU=Staff,DC=corp,DC=example,DC=com)",
            ) from None
        if "=" not in value:
            raise ConfigurationError(f"{section}.{key}", f"{value!r} is not a distinguished name")
    return tuple(values)


def _bool(table: Mapping[str, object], section: str, key: str, *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigurationError(f"{section}.{key}", "must be true or false")
    return value


def _number(table: Mapping[str, object], section: str, key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigurationError(f"{section}.{key}", "must be a positive number of seconds")
    return float(value)
