"""What the cloud's secrets are called and the port they come through: the `SecretSource`
protocol every source implements, the secrets' names (Key Vault's rules), and the names of the
settings that choose a source (read in `settings`).

Names only: nothing here reads a secret, and a secret's value never appears in a message.
"""

from __future__ import annotations

import re
from typing import Protocol

from writeback.errors import ConfigurationError

SIGNING_KEY_SECRET = "writeback-cloud-signing-key"  # noqa: S105 - a secret's name, not a secret
RELAY_KEYS_PREFIX = "writeback-relays-"
KEYVAULT_URL_ENV = "WRITEBACK_KEYVAULT_URL"
SECRETS_DIR_ENV = "WRITEBACK_SECRETS_DIR"
REFRESH_ENV = "WRITEBACK_KEYS_REFRESH_SECONDS"
_SECRET_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_DOMAIN = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def secret_name(name: str) -> str:
    """`name`, if Key Vault would accept it as a secret's name; ConfigurationError if not."""
    if not _SECRET_NAME.fullmatch(name):
        raise ConfigurationError(
            "secret name", f"{name[:80]!r} is not 1 to 127 of 0-9 a-z A-Z '-' (Key Vault's rule)"
        )
    return name


def relay_keys_secret(domain: str) -> str:
    """The name of the secret holding `domain`'s relay JWKS: `writeback-relays-` and the domain,
    lower-cased, each dash doubled and each dot made a dash (Key Vault names allow only 0-9 a-z
    A-Z and '-'). Doubling keeps the names apart: `a-b.c` and `a.b-c` would otherwise share one,
    and one domain's requests would be sealed to another's relays."""
    lowered = domain.lower()
    if not _DOMAIN.fullmatch(lowered):
        raise ConfigurationError("domain", f"{domain[:80]!r} is not a DNS domain name")
    return secret_name(RELAY_KEYS_PREFIX + lowered.replace("-", "--").replace(".", "-"))


class SecretSource(Protocol):
    """Where the cloud's secrets come from. `get` returns the current value of a secret or raises
    `SecretsUnavailable` naming it (missing, refused, unreachable)."""

    async def get(self, name: str) -> str: ...

    async def close(self) -> None: ...
