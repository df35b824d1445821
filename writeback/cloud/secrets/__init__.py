"""The cloud's keys: its signing key and each domain's relay keys, from Key Vault or a directory.

The cloud signs requests with its own ES256 key (a private JWK) and seals passwords to the public
keys its relays registered (one JWKS per AD domain). Both live as secrets behind the small
`SecretSource` port (`source`): `KeyVaultSecrets` (`keyvault`, the cloud's managed identity) in
Azure, `LocalSecrets` (`local`, one owner-only file per secret) in development, chosen by
`settings`. `CloudKeys` (`keys`) parses and caches them. Nothing in this package ever puts a
secret's value into a message, an exception or a log record. This module only re-exports.
"""

from writeback.cloud.secrets.keys import CloudKeys, parse_relay_keys, parse_signing_key
from writeback.cloud.secrets.keyvault import KeyVaultSecrets, translate_keyvault_error
from writeback.cloud.secrets.local import LocalSecrets
from writeback.cloud.secrets.settings import CloudKeysSettings, build_secret_source, check_resolved
from writeback.cloud.secrets.source import (
    KEYVAULT_URL_ENV,
    REFRESH_ENV,
    RELAY_KEYS_PREFIX,
    SECRETS_DIR_ENV,
    SIGNING_KEY_SECRET,
    SecretSource,
    relay_keys_secret,
)

__all__ = [
    "KEYVAULT_URL_ENV",
    "REFRESH_ENV",
    "RELAY_KEYS_PREFIX",
    "SECRETS_DIR_ENV",
    "SIGNING_KEY_SECRET",
    "CloudKeys",
    "CloudKeysSettings",
    "KeyVaultSecrets",
    "LocalSecrets",
    "SecretSource",
    "build_secret_source",
    "check_resolved",
    "parse_relay_keys",
    "parse_signing_key",
    "relay_keys_secret",
    "translate_keyvault_error",
]
