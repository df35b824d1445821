"""Who is calling the writeback API, and may they: Entra ID access tokens, API keys, app roles.

A caller presents `Authorization: Bearer <Entra ID access token>` or `x-functions-key: <key>`;
the result is a `Caller` that says who called, for the audit, and never how they proved it: no
token, key or part of either ever reaches a `Caller`, an exception message or a log record.
joserfc's and aiohttp's exceptions become `AuthError` in this package and nowhere else.

`callers` holds the vocabulary (roles, `Caller`, refusal reasons), `settings` the configuration,
`jwks` the tenant's signing keys, `authenticator` the checks and `delegation` the rule that a
signed-in user acts only on their own account. This module only re-exports.
"""

from writeback.cloud.auth.authenticator import Authenticator
from writeback.cloud.auth.callers import ALL_ROLES, READ, AuthReason, Caller, Role, required_role
from writeback.cloud.auth.jwks import HttpJwksFetcher, JwksFetcher, SigningKeys
from writeback.cloud.auth.settings import (
    API_KEY_ROLES_SETTING,
    API_KEYS_SETTING,
    AUDIENCES_SETTING,
    AUTHORITY_SETTING,
    JWKS_URL_SETTING,
    SELF_SERVICE_ACRS_SETTING,
    SELF_SERVICE_AMR_SETTING,
    TENANT_SETTING,
    AuthSettings,
)
from writeback.errors import AuthError

__all__ = [  # AuthError is re-exported: the entry point catches it from here
    "ALL_ROLES",
    "API_KEYS_SETTING",
    "API_KEY_ROLES_SETTING",
    "AUDIENCES_SETTING",
    "AUTHORITY_SETTING",
    "JWKS_URL_SETTING",
    "READ",
    "SELF_SERVICE_ACRS_SETTING",
    "SELF_SERVICE_AMR_SETTING",
    "TENANT_SETTING",
    "AuthError",
    "AuthReason",
    "AuthSettings",
    "Authenticator",
    "Caller",
    "HttpJwksFetcher",
    "JwksFetcher",
    "Role",
    "SigningKeys",
    "required_role",
]
