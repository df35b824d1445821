"""Who can sign in to the local Entra ID stand-in (devstack/entra.py): cloud users mapped to the
seeded AD users of the local DC (devstack/seed.py), as Entra Connect would synchronize them.

Each cloud user is one seeded AD account seen from the cloud: the same UPN (as Entra Connect
copies it), except `pat.obrien`, whose cloud UPN differs from the AD one (an alternate login ID,
as where AD uses a non-routable suffix); the AD account's objectSid as the `onprem_sid` claim;
app roles as a tenant would assign them: every user the self-service roles, `hana.helpdesk`
also the helpdesk's. The password is the seed's; the Temporary Access Pass is a fixed code
per user, which a helpdesk would hand out in the real tenant. Development data only.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from devstack.seed import SEED_PASSWORD

SELF_ROLES = ("Writeback.Change", "Writeback.Reset.SelfService", "Writeback.Unlock")
HELPDESK_ROLES = (*SELF_ROLES, "Writeback.Reset.Admin", "Writeback.Expire", "Writeback.Read")
CLOUD_SUFFIX = "writeback.example"  # the alternate (routable) suffix of the cloud-only UPN
# Object ids are stable per user and tenant, like Entra's: derived, never random.
_OID_NAMESPACE = uuid.UUID("5d2f7b1e-2c44-4f3a-9d1e-7a1b2c3d4e5f")


@dataclass(frozen=True)
class CloudUser:
    """A user of the stand-in's tenant, as its tokens describe them."""

    username: str  # the cloud UPN: the sign-in name, `preferred_username` and `upn`
    name: str
    oid: str
    password: str
    tap: str  # the Temporary Access Pass that signs in with strong verification
    roles: tuple[str, ...]
    onprem_sid: str | None = None  # None: a cloud-only user, with no AD account
    ad_upn: str | None = None


# (sAMAccountName, display name, cloud UPN when it differs from AD's, roles)
SEEDED: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = (
    ("alice", "Alice Adams", None, SELF_ROLES),
    ("bob", "Bob Brown", None, SELF_ROLES),
    ("carol.locked", "Carol Locked", None, SELF_ROLES),
    ("frank.strict", "Frank Strict", None, SELF_ROLES),
    ("pat.obrien", "Pat O'Brien", f"pat@{CLOUD_SUFFIX}", SELF_ROLES),
    ("hana.helpdesk", "Hana Helpdesk", None, HELPDESK_ROLES),
)


def tap_of(sam: str) -> str:
    """The fixed Temporary Access Pass of a seeded user (development data)."""
    return f"TAP-{sam}-2026"


def cloud_users(tenant_id: str, dns_domain: str, sids: Mapping[str, str]) -> list[CloudUser]:
    """The cloud users of SEEDED whose AD account exists: `sids` maps a sAMAccountName to its
    objectSid (read from the DC); a seeded user missing from it is left out."""
    users = []
    for sam, name, cloud_upn, roles in SEEDED:
        if sam not in sids:
            continue
        ad_upn = f"{sam}@{dns_domain}"
        users.append(
            CloudUser(
                username=cloud_upn or ad_upn,
                name=name,
                oid=str(uuid.uuid5(_OID_NAMESPACE, f"{tenant_id}/{sam}")),
                password=SEED_PASSWORD,
                tap=tap_of(sam),
                roles=roles,
                onprem_sid=sids[sam],
                ad_upn=ad_upn,
            )
        )
    return users


def to_json(users: list[CloudUser]) -> list[dict[str, object]]:
    return [asdict(user) for user in users]


def from_json(entries: list[dict[str, object]]) -> list[CloudUser]:
    return [
        CloudUser(**{**entry, "roles": tuple(entry["roles"])})  # type: ignore[arg-type]
        for entry in entries
    ]
