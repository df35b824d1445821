"""Whom a caller may act on: a signed-in user only on their own account, the helpdesk on anyone.

A delegated token (one with `scp`: a user signed in to an application that calls on their
behalf) binds the call to that user. Its target must be the token's own account:

- a token with `onprem_sid` (the AD account's objectSid, for a user synchronized from AD DS)
  may name only that SID. A cloud UPN is not enough there: where the cloud UPN differs from the
  AD one (alternate login IDs, a non-routable `.local` suffix), it may be another AD account's
  UPN, and the SID is what the account is;
- a token without it may name only its own UPN (`upn`, else `preferred_username`), compared as
  AD compares UPNs (`upn_key`).

A delegated caller holding the helpdesk's role (`Writeback.Reset.Admin`) may act on anyone its
roles allow. A reset of the caller's own account is a reset without the current password (a
user who forgot it), so where the deployment asks for strong verification
(`WRITEBACK_SELF_SERVICE_ACRS`, `WRITEBACK_SELF_SERVICE_AMR`) the token must show it: one of the
authentication contexts in `acrs`, or one of the methods in `amr`. Otherwise the caller is told
to sign in again (401 `auth.step_up_required`, with a claims challenge for the contexts, which
MSAL follows). Applications calling as themselves and API keys act on anyone their roles allow:
they are trusted to have verified the person they act for (docs/security.md).

Reads follow the same line: what the service knows of an account (its password rules) is for
holders of `Writeback.Read`, and for a signed-in user about their own account only, so that the
pages can show a user their rules before they type without the user holding a role that reads
everyone's.

Pure: no I/O, nothing from the token but the `Caller`'s claims.
"""

from __future__ import annotations

import base64
import json

from writeback.cloud.auth.callers import AuthReason, Caller, Role, refuse
from writeback.cloud.auth.settings import AuthSettings
from writeback.protocol import Operation
from writeback.protocol.accounts import AccountRef, AnchorKind, BadReference, upn_key

# The roles that make a signed-in user the helpdesk: they may act on other users' accounts.
HELPDESK_ROLES = frozenset({Role.RESET_ADMIN})


def check_target(caller: Caller, settings: AuthSettings, operation: Operation, user: str) -> None:
    """Raise AuthError unless `caller` may do `operation` on the account `user` names."""
    if not caller.delegated:
        return
    own = is_own_account(caller, user)
    if not own:
        if HELPDESK_ROLES & caller.roles:
            return
        raise refuse(AuthReason.OTHER_USER, _not_own(caller))
    if operation is Operation.RESET and not strongly_verified(caller, settings):
        raise refuse(
            AuthReason.STEP_UP_REQUIRED,
            "resetting your own password needs a sign-in with strong verification (a Temporary "
            "Access Pass, a passwordless method or multifactor authentication): sign in again "
            "and complete it, or change the password with the current one instead",
            challenge=claims_challenge(settings),
        )


def check_read(caller: Caller, user: str) -> None:
    """Raise AuthError unless `caller` may read what the service knows of the account `user`
    names: any account with the READ role, their own account as a signed-in user without it."""
    if Role.READ in caller.roles:
        return
    if not caller.delegated:
        raise refuse(AuthReason.FORBIDDEN, f"the caller does not have the {Role.READ} role")
    if not is_own_account(caller, user):
        raise refuse(AuthReason.OTHER_USER, _not_own(caller))


def is_own_account(caller: Caller, user: str) -> bool:
    """Whether `user` names the signed-in caller's own account (see the module doc)."""
    try:
        ref = AccountRef.parse(user)
    except BadReference:
        return False
    if caller.on_premises_sid:
        return ref.kind is AnchorKind.SID and ref.value.upper() == caller.on_premises_sid.upper()
    if ref.kind is AnchorKind.UPN and caller.name:
        return upn_key(ref.value) == upn_key(caller.name)
    return False


def strongly_verified(caller: Caller, settings: AuthSettings) -> bool:
    """Whether the token shows the strong verification the deployment asks for (any of the
    configured contexts in `acrs`, or any of the configured methods in `amr`); True when the
    deployment asks for none."""
    if not settings.step_up_required:
        return True
    return bool(
        set(settings.self_service_acrs) & caller.acrs or set(settings.self_service_amr) & caller.amr
    )


def claims_challenge(settings: AuthSettings) -> str | None:
    """The `WWW-Authenticate` value asking for the configured authentication contexts, as Entra
    ID's claims challenges spell it; None when the deployment configures none (an `amr` rule
    cannot be asked for: the user signs in again with a stronger method)."""
    contexts = list(settings.self_service_acrs)
    if not contexts:
        return None
    acrs: dict[str, object] = {"essential": True}
    if len(contexts) == 1:
        acrs["value"] = contexts[0]
    else:
        acrs["values"] = contexts
    claims = json.dumps({"access_token": {"acrs": acrs}}, separators=(",", ":"))
    encoded = base64.b64encode(claims.encode("ascii")).decode("ascii")
    authorize = f"{settings.authority}/{settings.tenant_id}/oauth2/v2.0/authorize"
    return (
        f'Bearer realm="", authorization_uri="{authorize}", error="insufficient_claims", '
        f'claims="{encoded}"'
    )


def _not_own(caller: Caller) -> str:
    if caller.on_premises_sid:
        how = f"name it by its on-premises SID, {caller.on_premises_sid}"
    elif caller.name:
        how = f"name it by your user principal name, {caller.name}"
    else:
        how = "the token names no account of yours"
    return f"a signed-in user may act only on their own account: {how}"
