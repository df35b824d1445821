"""Authorisation of the local Service Bus broker: CBS tokens and a per-queue policy.

Service Bus authorises each link against the tokens its connection put on the `$cbs` node
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-authentication-and-authorization,
and the CBS draft the SDK follows in `azure/servicebus/_pyamqp/cbs.py`). This module judges a
`put-token` as Service Bus does as far as this project relies on it: a shared access signature
(`SharedAccessSignature sr=&sig=&se=&skn=`, signed as `azure/servicebus/_pyamqp/utils.py`
`generate_sas_token` signs it) must name a known key, carry that key's HMAC-SHA256 signature,
not have expired on the broker's clock, and its resource (`sr`) must cover the audience it is
put for. A link then needs an unexpired token whose audience covers its entity, from an
identity with the right claim on that queue: `Send` to send, `Listen` to receive, settle, renew
or peek. Entra ID (JWT) tokens are refused: the broker cannot verify them (see the docs).

`Policy` maps key names to their keys and rights per queue; `writeback_policy` mirrors the
roles infra/ grants (bicep `function-access.bicep` and `relay-access.bicep`). Never log a token,
signature or key: decisions are logged by key name and queue only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote_plus, urlsplit

from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue

SEND, LISTEN, MANAGE = "Send", "Listen", "Manage"
ROOT_KEY_NAME = "RootManageSharedAccessKey"
ROOT_KEY = "SAS_KEY_VALUE"  # the official emulator's well-known key: it guards nothing
CLOUD_KEY_NAME = "writeback-cloud"
RELAY_KEY_NAME = "writeback-relay"
ALL_QUEUES = "*"


class TokenRefused(Exception):
    """A put-token that Service Bus would answer 401; the message names no secret."""


@dataclass(frozen=True)
class Grant:
    """One accepted token: who, for which audience (a path prefix), until when."""

    key_name: str
    path: str
    expires_at: float


@dataclass(frozen=True)
class Policy:
    """Shared access keys: name -> (key, {queue or ALL_QUEUES: rights})."""

    keys: Mapping[str, tuple[str, Mapping[str, frozenset[str]]]] = field(default_factory=dict)

    def with_key(self, name: str, key: str, rights: Mapping[str, Iterable[str]]) -> Policy:
        """This policy with one more key."""
        entry = (key, {q.lower(): frozenset(r) for q, r in rights.items()})
        return Policy({**self.keys, name: entry})

    def without(self, name: str, queue: str, right: str) -> Policy:
        """This policy with one right taken from a key on one queue (a missing role)."""
        key, rights = self.keys[name]
        changed = {**rights, queue.lower(): rights.get(queue.lower(), frozenset()) - {right}}
        return Policy({**self.keys, name: (key, changed)})

    def key(self, name: str) -> str:
        """The key of a key name (for a connection string)."""
        return self.keys[name][0]

    def allows(self, key_name: str, queue: str, right: str) -> bool:
        """Whether the key has `right` on `queue` (or on every queue)."""
        entry = self.keys.get(key_name)
        if entry is None:
            return False
        rights = entry[1]
        held = rights.get(queue.lower(), frozenset()) | rights.get(ALL_QUEUES, frozenset())
        return right in held or MANAGE in held

    def accept(self, token: str, token_type: str, audience: str, now: float) -> Grant:
        """Judge one put-token (see the module docstring); TokenRefused if Service Bus would."""
        # The SDK puts a shared access signature with type "jwt" too (pyamqp's JWTTokenAuth).
        if token_type not in ("jwt", "servicebus.windows.net:sastoken"):
            raise TokenRefused(f"token type '{token_type}' is not accepted")
        scheme, _, signed = token.partition(" ")
        if scheme != "SharedAccessSignature":
            raise TokenRefused("only shared access signatures are accepted by the local broker")
        fields = {k: v[0] for k, v in parse_qs(signed).items()}
        if not {"sr", "sig", "se"} <= fields.keys():
            raise TokenRefused("malformed shared access signature")
        name = fields.get("skn", "")
        entry = self.keys.get(name)
        if entry is None:
            raise TokenRefused(f"unknown shared access key name '{name}'")
        expected = base64.b64encode(
            hmac.new(
                entry[0].encode(),
                f"{quote_plus(fields['sr'])}\n{fields['se']}".encode(),
                hashlib.sha256,
            ).digest()
        ).decode()
        if not hmac.compare_digest(expected, fields["sig"]):
            raise TokenRefused(f"invalid signature for key name '{name}'")
        expires_at = float(fields["se"])
        if expires_at <= now:
            raise TokenRefused("the token has expired")
        resource, wanted = _path(fields["sr"]), _path(audience)
        if not _covers(resource, wanted):
            raise TokenRefused("the token's resource does not cover its audience")
        return Grant(name, wanted, expires_at)


def authorised(
    grants: Iterable[Grant], policy: Policy, entity: str, right: str, now: float
) -> str | None:
    """The key name of a grant unexpired at `now` covering `entity` with `right`, or None."""
    path = _path(entity)
    for grant in grants:
        if grant.expires_at > now and _covers(grant.path, path):
            queue = entity.split("/", 1)[0]
            if policy.allows(grant.key_name, queue, right):
                return grant.key_name
    return None


def _path(uri: str) -> str:
    """The entity path of an audience or resource URI (`sb://host/q` -> `q`), lower case."""
    parts = urlsplit(uri if "://" in uri else f"sb://host/{uri}")
    return parts.path.strip("/").lower()


def _covers(prefix: str, path: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def root_policy() -> Policy:
    """Only the emulator's root key, with every right (what the official emulator accepts)."""
    return Policy().with_key(ROOT_KEY_NAME, ROOT_KEY, {ALL_QUEUES: {MANAGE, SEND, LISTEN}})


def writeback_policy(domains: Iterable[str], keys: Mapping[str, str] | None = None) -> Policy:
    """The root key plus one key per identity infra/ grants roles to, with those roles:
    the cloud (function-access.bicep): Data Sender on each request queue, Data Receiver and
    Data Sender on outcomes, Data Receiver on heartbeats; a relay (relay-access.bicep): Data
    Receiver on its domain's request queue, Data Sender on outcomes and heartbeats."""
    keys = keys or {}
    requests = [requests_queue(d) for d in domains]
    cloud = {
        **{q: {SEND} for q in requests},
        OUTCOMES_QUEUE: {SEND, LISTEN},
        HEARTBEATS_QUEUE: {LISTEN},
    }
    relay = {**{q: {LISTEN} for q in requests}, OUTCOMES_QUEUE: {SEND}, HEARTBEATS_QUEUE: {SEND}}
    return (
        root_policy()
        .with_key(CLOUD_KEY_NAME, keys.get(CLOUD_KEY_NAME, "local-cloud-key"), cloud)
        .with_key(RELAY_KEY_NAME, keys.get(RELAY_KEY_NAME, "local-relay-key"), relay)
    )
