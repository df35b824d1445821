"""Signing the `writeback` client in to Microsoft Entra ID through azure-identity.

`--auth` (or WRITEBACK_AUTH) picks one of azure-identity's own credentials:

    azure-cli         AzureCliCredential: the account of `az login`
    device-code       DeviceCodeCredential: a code to enter at microsoft.com/devicelogin
    browser           InteractiveBrowserCredential: the system browser
    client-secret     ClientSecretCredential: AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (automation)
    managed-identity  ManagedIdentityCredential: the machine's identity (automation)

`api-key` and `token` keep the older ways (WRITEBACK_API_KEY, WRITEBACK_TOKEN or --token-file).
The scope asked for is the API's: `--scope`/WRITEBACK_API_SCOPE (its application ID URI), or
`<app id>/.default` from `--api-app-id`/WRITEBACK_API_APP_ID. Device code and browser sign in
through a public client: `--client-id`, else WRITEBACK_CLIENT_ID (the deployment's admin client,
output adminClientId), else AZURE_CLIENT_ID, else azure-identity's own. Device code, browser and
client secret keep their tokens in azure-identity's persistent cache (encrypted by the system; a
plain file only with --unencrypted-cache), and `writeback login` saves the account in an
authentication record (no secret in it), so later commands sign in silently. A token is never
printed, logged or put in a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from writeback.client.api import InvalidSetting

AUTH_ENV = "WRITEBACK_AUTH"
SCOPE_ENV = "WRITEBACK_API_SCOPE"
APP_ID_ENV = "WRITEBACK_API_APP_ID"
CLIENT_ID_ENV = "WRITEBACK_CLIENT_ID"
UNENCRYPTED_ENV = "WRITEBACK_TOKEN_CACHE_UNENCRYPTED"
CACHE_NAME = "writeback"
ENTRA_METHODS = ("azure-cli", "device-code", "browser", "client-secret", "managed-identity")
METHODS = ("api-key", "token", *ENTRA_METHODS)
INTERACTIVE = ("device-code", "browser")
# Hosts azure-identity knows; any other authority (Azure Stack, a test's) skips instance discovery.
_KNOWN_AUTHORITIES = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
)


_NO_KEYRING = (
    "token cache: cannot be encrypted here (no keyring or libsecret); pass --unencrypted-cache "
    f"(or set {UNENCRYPTED_ENV}=1) to keep it in a file under ~/.IdentityService readable by "
    "you alone, or use --auth azure-cli"
)


_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


class SignInFailed(Exception):
    """azure-identity could not get a token; the message says what to do, with no token."""


@dataclass(frozen=True)
class Options:
    """The sign-in as configured: method, tenant, client id, scope and cache choice."""

    method: str
    scope: str
    tenant: str | None
    client_id: str | None
    unencrypted_cache: bool


def scope(args: Any, environ: Mapping[str, str]) -> str:
    """The API's scope: --scope / WRITEBACK_API_SCOPE, the API's application ID URI (deployment
    output apiIdentifierUri, `api://<tenant>/writeback-<prefix>`; `/.default` is added), else
    `<app id>/.default` from --api-app-id / WRITEBACK_API_APP_ID (output apiClientId): Entra ID
    takes an application's id as its resource whatever its identifier URIs are."""
    given = args.scope or environ.get(SCOPE_ENV, "").strip()
    source = "--scope" if args.scope else SCOPE_ENV
    if given:
        if any(c.isspace() for c in given) or "://" not in given:
            raise InvalidSetting(source, "must be an application ID URI such as api://…")
        return given if given.endswith("/.default") else given.rstrip("/") + "/.default"
    app_id = args.api_app_id or environ.get(APP_ID_ENV, "").strip()
    source = "--api-app-id" if args.api_app_id else APP_ID_ENV
    if not app_id:
        raise InvalidSetting(
            APP_ID_ENV,
            f"is not set: set it (the API's application id) or {SCOPE_ENV} (its application "
            "ID URI), or pass --api-app-id or --scope",
        )
    if not _GUID.fullmatch(app_id):
        raise InvalidSetting(source, "must be the API app registration's application (client) id")
    return f"{app_id.lower()}/.default"


def client_id(args: Any, environ: Mapping[str, str]) -> str | None:
    """The application that signs in: --client-id; for device code and browser then
    WRITEBACK_CLIENT_ID (Writeback's own public client, which a shell's AZURE_CLIENT_ID set for
    other tools must not displace); then AZURE_CLIENT_ID (client secret's app, a user-assigned
    managed identity, or a public client); None: azure-identity's own."""
    if args.client_id:
        return str(args.client_id)
    names = ([CLIENT_ID_ENV] if args.auth in INTERACTIVE else []) + ["AZURE_CLIENT_ID"]
    for name in names:
        if value := environ.get(name, "").strip():
            if name == CLIENT_ID_ENV and not _GUID.fullmatch(value):
                raise InvalidSetting(name, "must be the admin client's application (client) id")
            return value
    return None


def options(args: Any, environ: Mapping[str, str]) -> Options:
    """The sign-in the arguments and the environment ask for (method must be an Entra one)."""
    return Options(
        method=args.auth,
        scope=scope(args, environ),
        tenant=args.tenant or environ.get("AZURE_TENANT_ID", "").strip() or None,
        client_id=client_id(args, environ),
        unencrypted_cache=args.unencrypted_cache
        or environ.get(UNENCRYPTED_ENV, "").strip().lower() in ("1", "true", "yes"),
    )


def record_path(method: str, environ: Mapping[str, str]) -> Path:
    """Where `writeback login` keeps the signed-in account (no secret: names and ids only)."""
    base = environ.get("XDG_CONFIG_HOME", "").strip() or str(Path("~/.config").expanduser())
    return Path(base) / "writeback" / f"{method}-account.json"


def _authority_kwargs(environ: Mapping[str, str]) -> dict[str, Any]:
    host = environ.get("AZURE_AUTHORITY_HOST", "").strip()
    if host and urllib.parse.urlsplit(host).hostname not in _KNOWN_AUTHORITIES:
        return {"authority": host, "disable_instance_discovery": True}
    return {"authority": host} if host else {}


def _prompt(verification_uri: str, user_code: str, expires_on: Any) -> None:
    print(
        f"To sign in, open {verification_uri} and enter the code {user_code}",
        file=sys.stderr,
        flush=True,
    )


def credential(opts: Options, environ: Mapping[str, str]) -> Any:
    """azure-identity's credential for `opts.method` (imported here: the `admin` extra)."""
    try:
        from azure import identity  # noqa: PLC0415
    except ImportError:
        raise InvalidSetting(
            "--auth", f"{opts.method} needs azure-identity: pip install 'writeback[admin]'"
        ) from None
    tenant = {"tenant_id": opts.tenant} if opts.tenant else {}
    if opts.method == "azure-cli":
        return identity.AzureCliCredential(tenant_id=opts.tenant or "")
    if opts.method == "managed-identity":
        return identity.ManagedIdentityCredential(client_id=opts.client_id)
    cache = identity.TokenCachePersistenceOptions(
        name=CACHE_NAME, allow_unencrypted_storage=opts.unencrypted_cache
    )
    common: dict[str, Any] = {**tenant, **_authority_kwargs(environ)}
    common["cache_persistence_options"] = cache
    if opts.method == "client-secret":
        secret = environ.get("AZURE_CLIENT_SECRET", "")
        if not (opts.tenant and opts.client_id and secret):
            raise InvalidSetting(
                "--auth client-secret",
                "needs AZURE_TENANT_ID (or --tenant), AZURE_CLIENT_ID (or --client-id) "
                "and AZURE_CLIENT_SECRET",
            )
        del common["tenant_id"]
        try:
            return identity.ClientSecretCredential(opts.tenant, opts.client_id, secret, **common)
        except ValueError as exc:
            raise InvalidSetting("--auth client-secret", _first_line(exc)) from None
    if opts.client_id:
        common["client_id"] = opts.client_id
    if saved := _saved_record(identity, opts, environ):
        common["authentication_record"] = saved
        common.pop("authority", None)  # the record's
    try:
        if opts.method == "device-code":
            return identity.DeviceCodeCredential(prompt_callback=_prompt, **common)
        return identity.InteractiveBrowserCredential(**common)
    except ValueError as exc:
        raise InvalidSetting(f"--auth {opts.method}", _first_line(exc)) from None


def _saved_record(identity: Any, opts: Options, environ: Mapping[str, str]) -> Any:
    """The account `writeback login` saved for this method, client id and tenant, if any."""
    record = record_path(opts.method, environ)
    if not record.is_file():
        return None
    try:
        saved = identity.AuthenticationRecord.deserialize(record.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        raise InvalidSetting(
            str(record), "is not a saved sign-in: delete it and run `writeback login`"
        ) from None
    if opts.client_id not in (None, saved.client_id) or opts.tenant not in (None, saved.tenant_id):
        return None
    if "://" not in saved.authority:  # a record keeps host:port, which would read as a scheme
        saved = identity.AuthenticationRecord(
            saved.tenant_id,
            saved.client_id,
            f"https://{saved.authority}",
            saved.home_account_id,
            saved.username,
        )
    return saved


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


def _advice(opts: Options, problem: str) -> str:
    if opts.method == "azure-cli":
        install = "install the Azure CLI, then " if "not found" in problem.lower() else ""
        return (
            f"{install}run `az login` (or `az login --tenant <tenant>`), or choose another --auth"
        )
    if "browser" in problem.lower():
        return "no browser can be opened here: use --auth device-code"
    if "AADSTS90002" in problem or "AADSTS900023" in problem or "tenant" in problem.lower():
        return "check --tenant / AZURE_TENANT_ID: it must be the directory the API is registered in"
    if opts.method in INTERACTIVE:
        return "run `writeback login` again"
    if opts.method == "managed-identity":
        return "run where a managed identity is assigned, or choose another --auth"
    return "check AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID"


def get_token(opts: Options, cred: Any, environ: Mapping[str, str], *, interactive: bool) -> str:
    """A token for `opts.scope`; `interactive` false means the cache or nothing (no prompt)."""
    from azure.core.exceptions import ClientAuthenticationError  # noqa: PLC0415
    from azure.identity import (  # noqa: PLC0415
        AuthenticationRequiredError,
        CredentialUnavailableError,
    )

    try:
        if opts.method in INTERACTIVE and interactive:
            record = cred.authenticate(scopes=[opts.scope])
            _save(record_path(opts.method, environ), record.serialize())
        return str(cred.get_token(opts.scope).token)
    except AuthenticationRequiredError:
        raise SignInFailed(
            f"--auth {opts.method}: not signed in (or the sign-in expired): run "
            f"`writeback login --auth {opts.method}` first"
        ) from None
    except CredentialUnavailableError as exc:
        problem = _first_line(exc)
        raise SignInFailed(
            f"--auth {opts.method}: no credential available ({problem}); {_advice(opts, problem)}"
        ) from None
    except ClientAuthenticationError as exc:
        problem = _first_line(exc)
        if "encryption is impossible" in problem.lower():
            raise SignInFailed(_NO_KEYRING) from None
        raise SignInFailed(
            f"--auth {opts.method}: Entra ID refused the sign-in ({problem}); "
            f"{_advice(opts, problem)}"
        ) from None
    except ValueError as exc:
        problem = _first_line(exc)
        if "encryption is impossible" in problem.lower():
            raise SignInFailed(_NO_KEYRING) from None
        raise SignInFailed(f"--auth {opts.method}: {problem}") from None
    except Exception as exc:  # one line, never a traceback
        raise SignInFailed(
            f"--auth {opts.method}: sign-in failed ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _save(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def claims(token: str) -> dict[str, Any]:
    """The access token's payload, decoded WITHOUT verifying its signature: for display only.
    The API verifies every token it receives; an opaque token gives {}."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return payload if isinstance(payload, dict) else {}


def describe(token_claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What `whoami` shows of a token: who (user or application), tenant, roles and scopes."""
    rows: list[tuple[str, str]] = []
    who = token_claims.get("upn") or token_claims.get("preferred_username")
    if who:
        rows.append(("user", str(who)))
    app = token_claims.get("appid") or token_claims.get("azp")
    if app:
        rows.append(("app", str(app)))
    kind = "delegated (a user)" if token_claims.get("scp") or who else "app-only (an application)"
    rows.append(("acts as", kind))
    for name in ("oid", "tid", "aud"):
        if token_claims.get(name):
            rows.append((name, str(token_claims[name])))
    roles = token_claims.get("roles")
    rows.append(("roles", " ".join(map(str, roles)) if isinstance(roles, list) and roles else "-"))
    rows.append(("scopes", str(token_claims.get("scp") or "-")))
    if isinstance(token_claims.get("exp"), int | float):
        expires = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(token_claims["exp"]))
        rows.append(("expires", expires))
    return rows
