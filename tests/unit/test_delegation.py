"""A signed-in user acts only on their own account; a reset of it needs strong verification.

Tokens are minted and verified as in test_auth (local RSA keys, an in-memory JWKS); the HTTP
cases go through function_app's handlers over the in-process cloud and relay.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

import function_app
from tests import functions
from tests.unit.cloud_stack import DOMAIN, cloud_stack, request
from tests.unit.test_auth import (
    ENTRA_ENV,
    OTHER_TENANT,
    TENANT,
    Rig,
    bearer,
    mint,
    v1_claims,
    v2_claims,
)
from writeback.cloud.auth import (
    AUTHORITY_SETTING,
    JWKS_URL_SETTING,
    SELF_SERVICE_ACRS_SETTING,
    SELF_SERVICE_AMR_SETTING,
    TENANT_SETTING,
    AuthSettings,
    Caller,
    Role,
)
from writeback.cloud.auth.delegation import claims_challenge
from writeback.errors import AuthError, ConfigurationError
from writeback.protocol import Operation

pytestmark = pytest.mark.timeout(60)

ALICE_SID = "S-1-5-21-1004336348-1177238915-682003330-1104"
BOB_SID = "S-1-5-21-1004336348-1177238915-682003330-1105"
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
SELF_ROLES = [Role.CHANGE.value, Role.RESET_SELF_SERVICE.value, Role.UNLOCK.value]
HELPDESK_ROLES = [*SELF_ROLES, Role.RESET_ADMIN.value, Role.EXPIRE.value, Role.READ.value]
LOCAL_AUTHORITY = "https://localhost:8443"


def delegated(**claims: Any) -> dict[str, Any]:
    """A signed-in user's v2.0 token for the API (scp Writeback.Self)."""
    return v2_claims(**{"scp": "Writeback.Self", "roles": SELF_ROLES, **claims})


async def caller_of(rig: Rig, claims: dict[str, Any]) -> Caller:
    return await rig.auth.authenticate(bearer(mint(claims)))


def refusal(rig: Rig, caller: Caller, operation: Operation, user: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        rig.auth.authorize_target(caller, operation, user)
    return caught.value


def challenged_claims(challenge: str | None) -> object:
    """The claims request a `WWW-Authenticate` claims challenge carries, decoded."""
    assert challenge is not None
    match = re.search(r'claims="([^"]+)"', challenge)
    assert match is not None
    return json.loads(base64.b64decode(match.group(1)))


class TestOwnAccount:
    async def test_a_token_with_onprem_sid_acts_on_that_sid(self) -> None:
        """A signed-in user whose token carries onprem_sid may name that SID, in any case."""
        rig = Rig()
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID))
        assert caller.delegated
        assert caller.on_premises_sid == ALICE_SID
        for operation in (Operation.CHANGE, Operation.UNLOCK, Operation.RESET):
            rig.auth.authorize_target(caller, operation, ALICE_SID)
        rig.auth.authorize_target(caller, Operation.CHANGE, "s" + ALICE_SID[1:])

    async def test_a_token_with_onprem_sid_may_not_name_a_upn(self) -> None:
        """With onprem_sid, even the token's own UPN is refused: a cloud UPN may be another AD
        account's UPN, so the SID is what binds the call; the message names the SID to use."""
        rig = Rig()
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID, preferred_username=ALICE))
        error = refusal(rig, caller, Operation.CHANGE, ALICE)
        assert (error.reason, error.status) == ("auth.other_user", 403)
        assert ALICE_SID in error.problem

    async def test_a_token_without_onprem_sid_acts_on_its_upn(self) -> None:
        """Without onprem_sid, the token's UPN names the account, compared as AD compares UPNs
        (case and character width ignored)."""
        rig = Rig()
        caller = await caller_of(rig, delegated(preferred_username=ALICE))
        for spelling in (ALICE, ALICE.upper(), "ａｌｉｃｅ@contoso.example"):
            rig.auth.authorize_target(caller, Operation.CHANGE, spelling)

    async def test_the_upn_claim_wins_over_preferred_username(self) -> None:
        """A v1.0 token's upn names the account; a different preferred_username does not."""
        rig = Rig()
        claims = v1_claims(scp="Writeback.Self", upn=BOB, preferred_username=ALICE)
        caller = await caller_of(rig, claims)
        rig.auth.authorize_target(caller, Operation.UNLOCK, BOB)
        assert refusal(rig, caller, Operation.UNLOCK, ALICE).reason == "auth.other_user"

    @pytest.mark.parametrize("operation", list(Operation))
    async def test_another_users_account_is_refused(self, operation: Operation) -> None:
        """A signed-in user without the helpdesk role may not act on anyone else, by UPN, SID
        or any other name, whatever the operation and the roles they hold."""
        rig = Rig()
        by_upn = await caller_of(rig, delegated(preferred_username=ALICE))
        by_sid = await caller_of(
            rig,
            delegated(onprem_sid=ALICE_SID, roles=[r.value for r in Role if r != Role.RESET_ADMIN]),
        )
        for caller, target in (
            (by_upn, BOB),
            (by_upn, BOB_SID),
            (by_sid, BOB_SID),
            (by_sid, "CONTOSO\\alice"),
            (by_sid, "3f2504e0-4f89-41d3-9a0c-0305e82c3301"),
        ):
            error = refusal(rig, caller, operation, target)
            assert (error.reason, error.status) == ("auth.other_user", 403)

    async def test_the_helpdesk_acts_on_other_users(self) -> None:
        """A signed-in user holding Writeback.Reset.Admin acts on others, with no step-up."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID, roles=HELPDESK_ROLES))
        for operation in Operation:
            rig.auth.authorize_target(caller, operation, BOB_SID)
            rig.auth.authorize_target(caller, operation, BOB)

    async def test_applications_and_api_keys_keep_their_rules(self) -> None:
        """A token without scp (an application) and an API key act on anyone their roles allow."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1", "WRITEBACK_API_KEYS": "k" * 40})
        application = await caller_of(rig, v2_claims(scp=None, roles=[Role.RESET_SELF_SERVICE]))
        key = await rig.auth.authenticate({"x-functions-key": "k" * 40})
        for caller in (application, key):
            assert not caller.delegated
            for target in (ALICE, BOB_SID):
                rig.auth.authorize_target(caller, Operation.RESET, target)


class TestStepUp:
    async def test_without_settings_a_user_resets_their_own_password(self) -> None:
        """A deployment that asks for no strong verification lets a user reset their own."""
        rig = Rig()
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID))
        rig.auth.authorize_target(caller, Operation.RESET, ALICE_SID)

    async def test_an_own_reset_without_the_context_is_challenged(self) -> None:
        """With WRITEBACK_SELF_SERVICE_ACRS, an own reset without the context is a 401
        auth.step_up_required whose claims challenge asks for it, as Entra's spell it."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        for claims in (
            delegated(onprem_sid=ALICE_SID),
            delegated(onprem_sid=ALICE_SID, acrs=["c2"]),
        ):
            caller = await caller_of(rig, claims)
            error = refusal(rig, caller, Operation.RESET, ALICE_SID)
            assert (error.reason, error.status) == ("auth.step_up_required", 401)
            assert "strong verification" in error.problem
            assert error.challenge is not None
            assert error.challenge.startswith('Bearer realm="", authorization_uri="')
            assert f"/{TENANT}/oauth2/v2.0/authorize" in error.challenge
            assert 'error="insufficient_claims"' in error.challenge
            assert challenged_claims(error.challenge) == {
                "access_token": {"acrs": {"essential": True, "value": "c1"}}
            }

    async def test_an_own_reset_with_the_context_is_allowed(self) -> None:
        """A token whose acrs holds one of the configured contexts resets its own password."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1,c7"})
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID, acrs=["c7"]))
        rig.auth.authorize_target(caller, Operation.RESET, ALICE_SID)

    async def test_a_change_and_an_unlock_need_no_step_up(self) -> None:
        """The current password proves a change, and an unlock sets no password."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID))
        rig.auth.authorize_target(caller, Operation.CHANGE, ALICE_SID)
        rig.auth.authorize_target(caller, Operation.UNLOCK, ALICE_SID)

    async def test_the_helpdesk_resetting_its_own_password_steps_up_too(self) -> None:
        """The admin role is no way around step-up for the caller's own account."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        caller = await caller_of(rig, delegated(onprem_sid=ALICE_SID, roles=HELPDESK_ROLES))
        assert refusal(rig, caller, Operation.RESET, ALICE_SID).reason == "auth.step_up_required"

    async def test_amr_methods_count_where_the_token_carries_them(self) -> None:
        """With WRITEBACK_SELF_SERVICE_AMR, a v1.0 token's amr with one of the methods resets;
        without it the refusal has no claims challenge (amr cannot be asked for)."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_AMR_SETTING: "mfa,fido"})
        strong = await caller_of(rig, v1_claims(scp="Writeback.Self", amr=["pwd", "mfa"]))
        rig.auth.authorize_target(strong, Operation.RESET, "bob@contoso.example")
        weak = await caller_of(rig, v1_claims(scp="Writeback.Self", amr=["pwd"]))
        error = refusal(rig, weak, Operation.RESET, "bob@contoso.example")
        assert (error.reason, error.challenge) == ("auth.step_up_required", None)

    def test_several_contexts_are_asked_for_as_values(self) -> None:
        """Several configured contexts are one claims request with `values` (any of them)."""
        settings = AuthSettings.from_env({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1,c2"})
        assert challenged_claims(claims_challenge(settings)) == {
            "access_token": {"acrs": {"essential": True, "values": ["c1", "c2"]}}
        }

    async def test_malformed_acrs_or_amr_claims_are_refused(self) -> None:
        """acrs and amr must be lists of strings, onprem_sid a string."""
        rig = Rig()
        for claims in (
            delegated(acrs="c1"),
            delegated(amr=[1]),
            delegated(onprem_sid=["S-1-5-21-1-2-3-4"]),
        ):
            error = await rig.refused(bearer(mint(claims)))
            assert error.reason == "auth.invalid_token"


class TestAuthority:
    def test_the_authority_sets_the_issuer_and_the_keys(self) -> None:
        """WRITEBACK_AUTH_AUTHORITY moves the v2.0 issuer and the JWKS to another host (the
        local stand-in), without Entra's v1.0 issuer."""
        settings = AuthSettings.from_env({**ENTRA_ENV, AUTHORITY_SETTING: LOCAL_AUTHORITY + "/"})
        assert settings.issuers == (f"{LOCAL_AUTHORITY}/{TENANT}/v2.0",)
        assert settings.jwks_url == f"{LOCAL_AUTHORITY}/{TENANT}/discovery/v2.0/keys"

    def test_entra_is_the_default_authority(self) -> None:
        """Without the setting, tokens come from Entra ID's global cloud (v2.0 and v1.0)."""
        settings = AuthSettings.from_env(ENTRA_ENV)
        assert settings.issuers == (
            f"https://login.microsoftonline.com/{TENANT}/v2.0",
            f"https://sts.windows.net/{TENANT}/",
        )

    async def test_a_token_from_another_issuer_or_tenant_is_refused(self) -> None:
        """Under a local authority, Entra's own tokens are refused, and so is a token of the
        same authority for another tenant."""
        rig = Rig({**ENTRA_ENV, AUTHORITY_SETTING: LOCAL_AUTHORITY})
        local = f"{LOCAL_AUTHORITY}/{TENANT}/v2.0"
        await rig.auth.authenticate(bearer(mint(delegated(iss=local))))
        entra = await rig.refused(bearer(mint(delegated())))
        assert (entra.reason, entra.problem) == (
            "auth.invalid_token",
            "the token has the wrong issuer",
        )
        other = await rig.refused(
            bearer(mint(delegated(iss=f"{LOCAL_AUTHORITY}/{OTHER_TENANT}/v2.0", tid=OTHER_TENANT)))
        )
        assert other.reason == "auth.invalid_token"
        foreign = await rig.refused(bearer(mint(delegated(iss=local, tid=OTHER_TENANT))))
        assert foreign.problem == "the token is from another tenant"

    @pytest.mark.parametrize(
        ("environ", "setting"),
        [
            ({AUTHORITY_SETTING: "https://login.microsoftonline.com/tenant"}, AUTHORITY_SETTING),
            ({AUTHORITY_SETTING: "http://login.example"}, AUTHORITY_SETTING),
            ({SELF_SERVICE_ACRS_SETTING: "c1,urn:mfa"}, SELF_SERVICE_ACRS_SETTING),
            ({SELF_SERVICE_ACRS_SETTING: "c100"}, SELF_SERVICE_ACRS_SETTING),
            ({SELF_SERVICE_AMR_SETTING: "MFA!"}, SELF_SERVICE_AMR_SETTING),
            (
                {
                    TENANT_SETTING: "",
                    "WRITEBACK_AUTH_AUDIENCES": "",
                    "WRITEBACK_API_KEYS": "k" * 40,
                    SELF_SERVICE_ACRS_SETTING: "c1",
                },
                SELF_SERVICE_ACRS_SETTING,
            ),
        ],
    )
    def test_bad_settings_are_named(self, environ: dict[str, str], setting: str) -> None:
        """A bad authority or step-up setting stops start-up with a message naming it."""
        with pytest.raises(ConfigurationError) as caught:
            AuthSettings.from_env({**ENTRA_ENV, **environ})
        assert caught.value.setting == setting

    def test_a_local_authority_may_be_plain_http_on_loopback(self) -> None:
        """As for the JWKS URL, http:// is accepted on loopback only."""
        settings = AuthSettings.from_env({**ENTRA_ENV, AUTHORITY_SETTING: "http://127.0.0.1:9"})
        assert settings.jwks_url == f"http://127.0.0.1:9/{TENANT}/discovery/v2.0/keys"
        explicit = AuthSettings.from_env(
            {
                **ENTRA_ENV,
                AUTHORITY_SETTING: LOCAL_AUTHORITY,
                JWKS_URL_SETTING: "https://k.example/",
            }
        )
        assert explicit.jwks_url == "https://k.example/"


class TestOverHttp:
    async def test_a_signed_in_user_changes_only_their_own_password(self, tmp_path: Path) -> None:
        """Through function_app: the user's own change applies; another user's is a 403
        auth.other_user that reaches neither the relay nor the audit."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        own, other = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
        token = {"Authorization": f"Bearer {mint(delegated(preferred_username=own))}"}
        async with cloud_stack(tmp_path, authenticator=rig.auth) as stack:
            await stack.start_relay()
            body = {"oldPassword": "Old-Pa55word!", "newPassword": "New-Pa55word!"}
            status, answer, _ = await functions.http(
                function_app.change_password,
                request("POST", "x", {"user": other, **body}, key=None, headers=token),
            )
            assert (status, functions.json_body(answer)["error"]) == (403, "auth.other_user")
            assert stack.directory.applied == []
            assert stack.audit.records == {}
            status, _, _ = await functions.http(
                function_app.change_password,
                request("POST", "x", {"user": own, **body}, key=None, headers=token),
            )
            assert status == 200
            assert [command.user for command in stack.directory.applied] == [own]

    async def test_a_step_up_refusal_carries_the_claims_challenge(self, tmp_path: Path) -> None:
        """Through function_app: an own reset without the context answers 401 with the claims
        challenge in WWW-Authenticate; with the context it is applied."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        own = f"alice@{DOMAIN}"
        body = {"user": own, "newPassword": "New-Pa55word!", "initiator": "self-service"}
        async with cloud_stack(tmp_path, authenticator=rig.auth) as stack:
            await stack.start_relay()
            weak = {"Authorization": f"Bearer {mint(delegated(preferred_username=own))}"}
            status, answer, headers = await functions.http(
                function_app.reset_password, request("POST", "x", body, key=None, headers=weak)
            )
            assert (status, functions.json_body(answer)["error"]) == (401, "auth.step_up_required")
            assert challenged_claims(headers["www-authenticate"]) == {
                "access_token": {"acrs": {"essential": True, "value": "c1"}}
            }
            strong = delegated(preferred_username=own, acrs=["c1"])
            status, _, _ = await functions.http(
                function_app.reset_password,
                request("POST", "x", body, key=None, headers=bearer(mint(strong))),
            )
            assert status == 200

    async def test_the_admin_clients_token_acts_as_its_user_holds_roles(
        self, tmp_path: Path
    ) -> None:
        """Through function_app, a token the admin client (`writeback login --auth
        device-code`) gets for <api>/.default: azp the admin client, scp Writeback.Self (its
        consented scope), roles the user's app role assignments. A helpdesk user (assigned
        Writeback.Reset.Admin) resets, unlocks and expires another user's account and reads
        its history; a user assigned the other roles, Writeback.Unlock included, is refused
        auth.other_user on anyone but themselves, which never reaches the relay."""
        rig = Rig({**ENTRA_ENV, SELF_SERVICE_ACRS_SETTING: "c1"})
        admin_client = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"
        helpdesk, user, other = (f"{name}@{DOMAIN}" for name in ("helpdesk", "alice", "bob"))

        def signed_in(name: str, roles: list[str]) -> dict[str, str]:
            claims = delegated(azp=admin_client, preferred_username=name, roles=roles)
            return bearer(mint(claims))

        writes = (
            (function_app.reset_password, {"newPassword": "New-Pa55word!", "initiator": "admin"}),
            (function_app.unlock_account, {}),
            (function_app.expire_password, {}),
        )
        async with cloud_stack(tmp_path, authenticator=rig.auth) as stack:
            await stack.start_relay()
            without_admin = signed_in(user, [r.value for r in Role if r != Role.RESET_ADMIN])
            status, answer, _ = await functions.http(
                function_app.unlock_account,
                request("POST", "x", {"user": other}, key=None, headers=without_admin),
            )
            assert (status, functions.json_body(answer)["error"]) == (403, "auth.other_user")
            assert stack.directory.applied == []
            status, _, _ = await functions.http(
                function_app.unlock_account,
                request("POST", "x", {"user": user}, key=None, headers=without_admin),
            )
            assert status == 200
            admin = signed_in(helpdesk, HELPDESK_ROLES)
            for function, body in writes:
                status, answer, _ = await functions.http(
                    function, request("POST", "x", {"user": other, **body}, key=None, headers=admin)
                )
                assert status == 200, functions.json_body(answer)
            assert [command.user for command in stack.directory.applied] == [user, *[other] * 3]
            read = request("GET", "x", key=None, headers=admin, route_params={"user": other})
            status, answer, _ = await functions.http(function_app.user_history, read)
            assert status == 200
            assert len(functions.json_body(answer)["requests"]) == 3
            (record,) = [r for r in stack.audit.records.values() if r.operation == "reset"]
            assert record.caller.startswith(f"entra-user:{helpdesk} ")
