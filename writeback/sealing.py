"""Sealing and signing on JOSE (joserfc): what makes Service Bus untrusted transport.

Passwords are sealed as JWE (RSA-OAEP-256 key wrapping, A256GCM content encryption, JSON
serialization with one recipient per relay key) with the request's identity bound as additional
authenticated data, so sealed secrets cannot be moved to another request, user or domain.
Messages are signed as compact JWS with ES256 (P-256, which Key Vault keys support) and a `typ`
per message kind, so an outcome can never pass for a request. Every key carries a `kid`; a relay's
kids start with its relay id, and an outcome or heartbeat must be signed by a key of the relay it
names. joserfc's exceptions become `ProtocolError` here and nowhere else. Nothing here ever puts
a password or a private key into a string it returns or raises.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
from collections.abc import Mapping
from typing import Any, cast

from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from writeback.errors import ConfigurationError, ProtocolError
from writeback.protocol import (
    ChangePassword,
    Command,
    ExpirePassword,
    Operation,
    Reason,
    ResetPassword,
    UnlockAccount,
)
from writeback.protocol.messages import (
    MAX_MESSAGE_BYTES,
    Heartbeat,
    OutcomeMessage,
    RequestMessage,
    Secrets,
    decode,
    encode,
)

KEY_WRAPPING = "RSA-OAEP-256"
CONTENT_ENCRYPTION = "A256GCM"
SIGNING = "ES256"
RSA_BITS = 3072
EC_CURVE = "P-256"
REQUEST_TYPE = "writeback-request+jws"
OUTCOME_TYPE = "writeback-outcome+jws"
HEARTBEAT_TYPE = "writeback-heartbeat+jws"
SECRETS_TYPE = "writeback-secrets+jwe"
CLOCK_SKEW_SECONDS = 120  # how far in the future a request's issue time may be

INVALID_SIGNATURE = Reason.REQUEST_INVALID_SIGNATURE.value
UNDECRYPTABLE = Reason.REQUEST_UNDECRYPTABLE.value
# RSA-OAEP-256 is not in joserfc's default JWE registry: allow exactly what we use.
_JWE_REGISTRY = jwe.JWERegistry(algorithms=[KEY_WRAPPING, CONTENT_ENCRYPTION])
# What joserfc (and the base64/JSON code beneath it) raises on hostile input.
_JOSE_FAILURES = (JoseError, ValueError, TypeError, KeyError, IndexError, AttributeError)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ALGORITHMS = {"enc": (KEY_WRAPPING, "RSA"), "sig": (SIGNING, "EC")}


def public_keyset(jwks: object, setting: str) -> KeySet:
    """Import a JWKS of public keys (a domain's relays, or the cloud), strictly.

    Each key needs a `kid`, a `use` of "enc" (RSA, RSA-OAEP-256) or "sig" (EC P-256, ES256) and
    no private member: a JWKS holding a private key is refused outright, since it was published
    by mistake and must be replaced, not used. `setting` names where the JWKS came from.
    """
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigurationError(setting, "not a JWKS with at least one key")
    seen: set[str] = set()
    for index, key in enumerate(keys):
        where = f"{setting} key {index}"
        if not isinstance(key, Mapping):
            raise ConfigurationError(setting, f"key {index} is not a JSON object")
        if _PRIVATE_MEMBERS & set(key):
            raise ConfigurationError(
                setting,
                f"key {index} holds private key material; "
                "publish public keys only and replace this key",
            )
        kid, use = key.get("kid"), key.get("use")
        if not isinstance(kid, str) or not kid or kid in seen:
            raise ConfigurationError(setting, f"key {index} needs a unique kid")
        seen.add(kid)
        if use not in _ALGORITHMS:
            raise ConfigurationError(setting, f"{where} ({kid}): use must be enc or sig")
        algorithm, kty = _ALGORITHMS[use]
        if key.get("kty") != kty or key.get("alg", algorithm) != algorithm:
            raise ConfigurationError(setting, f"{where} ({kid}): {use} keys are {kty} {algorithm}")
    try:
        return KeySet.import_key_set({"keys": [dict(key) for key in keys]})
    except _JOSE_FAILURES as exc:
        raise ConfigurationError(setting, f"invalid key ({type(exc).__name__})") from None


def keys_for(keys: KeySet, use: str) -> list[Any]:
    """The keys of a set meant for `use` ("enc" or "sig")."""
    return [key for key in keys.keys if key.get("use") == use]


# -- secrets --------------------------------------------------------------------------------
def seal(secrets: Secrets, binding: bytes, recipients: KeySet) -> dict[str, object]:
    """Encrypt `secrets` to every encryption key in `recipients`, bound to `binding`."""
    keys = keys_for(recipients, "enc")
    if not keys:
        raise ProtocolError(UNDECRYPTABLE, "the domain has no relay encryption key registered")
    sealed = jwe.GeneralJSONEncryption(
        {"enc": CONTENT_ENCRYPTION, "typ": SECRETS_TYPE},
        encode(secrets.to_payload()),
        aad=binding,
    )
    for key in keys:
        sealed.add_recipient({"alg": KEY_WRAPPING, "kid": key.kid}, key)
    return dict(jwe.encrypt_json(sealed, None, registry=_JWE_REGISTRY))


def bound_to(sealed: Mapping[str, object], binding: bytes) -> bool:
    """Whether `sealed` carries `binding` as its additional authenticated data (checked
    without a key: a caller-sealed password is checked in the cloud before it is sent)."""
    return hmac.compare_digest(str(sealed.get("aad", "")), _b64(binding))


def recipient_kid(recipient: object) -> str | None:
    """The `kid` a JWE recipient names in its header, if it is a string (a caller's JWE may put
    anything there)."""
    header = recipient.get("header") if isinstance(recipient, dict) else None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def open_sealed(
    sealed: Mapping[str, object], binding: bytes, keys: KeySet, operation: Operation
) -> Secrets:
    """Decrypt with whichever of `keys` the secrets were sealed to; check the binding."""
    ours = {key.kid for key in keys_for(keys, "enc")}
    recipients = sealed.get("recipients")
    if not isinstance(recipients, list):
        raise ProtocolError(UNDECRYPTABLE, "not a JWE in general JSON serialization", "sealed")
    mine = [r for r in recipients if recipient_kid(r) in ours]
    if not mine:
        raise ProtocolError(UNDECRYPTABLE, "sealed to none of this relay's keys", "sealed")
    # The JWE authenticates its aad, but only we know which aad it must be.
    if not bound_to(sealed, binding):
        raise ProtocolError(UNDECRYPTABLE, "sealed for another request", "sealed")
    try:
        # joserfc wants a key for every recipient: keep only ours (aad and content key are shared).
        candidate = cast(jwe.GeneralJSONSerialization, {**sealed, "recipients": mine})
        opened = jwe.decrypt_json(candidate, keys, registry=_JWE_REGISTRY)
    except _JOSE_FAILURES as exc:
        raise ProtocolError(
            UNDECRYPTABLE, f"cannot decrypt ({type(exc).__name__})", "sealed"
        ) from None
    if opened.protected.get("typ") != SECRETS_TYPE:
        raise ProtocolError(UNDECRYPTABLE, "not writeback secrets", "sealed")
    return Secrets.parse(decode(opened.plaintext or b"", "secrets"), operation)


# -- signatures -----------------------------------------------------------------------------
def sign(payload: Mapping[str, object], key: ECKey, typ: str) -> str:
    """A compact JWS over the canonical JSON of `payload`."""
    header = {"alg": SIGNING, "kid": key.kid, "typ": typ}
    return jws.serialize_compact(header, encode(payload), key, algorithms=[SIGNING])


def verify(token: object, keys: KeySet, typ: str) -> tuple[str, object]:
    """(kid, decoded payload) of a JWS signed by one of the signing keys in `keys`."""
    if not isinstance(token, str | bytes) or len(token) > MAX_MESSAGE_BYTES:
        raise ProtocolError(INVALID_SIGNATURE, "not a signed message of acceptable size")
    try:
        raw = token.encode("ascii") if isinstance(token, str) else token
        header = jws.extract_compact(raw).headers()
        kid = header.get("kid")
        key = next((k for k in keys_for(keys, "sig") if k.kid == kid), None)
        if key is None:
            raise ProtocolError(INVALID_SIGNATURE, f"signed by an unknown key {kid!r}")
        if header.get("typ") != typ or header.get("alg") != SIGNING:
            raise ProtocolError(INVALID_SIGNATURE, f"not a {typ} message")
        verified = jws.deserialize_compact(raw, key, algorithms=[SIGNING])
    except ProtocolError:
        raise
    except _JOSE_FAILURES as exc:
        raise ProtocolError(INVALID_SIGNATURE, f"bad signature ({type(exc).__name__})") from None
    return str(kid), decode(verified.payload, "payload")


# -- requests: the cloud seals and signs, the relay verifies and opens ----------------------
def seal_request(
    message: RequestMessage, secrets: Secrets | None, relay_keys: KeySet, cloud_key: ECKey
) -> str:
    """The signed request, with `secrets` (None for an unlock) sealed to the domain's relays."""
    sealed = seal(secrets, message.binding(), relay_keys) if secrets is not None else None
    return sign(dataclasses.replace(message, sealed=sealed).to_payload(), cloud_key, REQUEST_TYPE)


def verify_request(token: object, cloud_keys: KeySet, domain: str, now: float) -> RequestMessage:
    """Check the cloud's signature, the format, the domain and the expiry; nothing is opened."""
    _, payload = verify(token, cloud_keys, REQUEST_TYPE)
    message = RequestMessage.parse(payload)
    if message.domain != domain:
        raise ProtocolError(
            UNDECRYPTABLE, f"for {message.domain}, this relay serves {domain}", "domain"
        )
    if now >= message.expires_at:
        raise ProtocolError(
            Reason.REQUEST_EXPIRED.value, f"expired {int(now - message.expires_at)}s ago", "exp"
        )
    if message.issued_at > now + CLOCK_SKEW_SECONDS:
        raise ProtocolError(
            Reason.REQUEST_MALFORMED.value, "issued in the future (clock skew?)", "iat"
        )
    return message


def open_request(message: RequestMessage, relay_keys: KeySet) -> Command:
    """The command a verified request asks for, with its secrets opened."""
    if message.operation is Operation.UNLOCK:
        return UnlockAccount(message.user)
    if message.operation is Operation.EXPIRE:
        return ExpirePassword(message.user)
    if message.sealed is None:  # parse() already refuses this; kept for the type checker
        raise ProtocolError(UNDECRYPTABLE, "no sealed secrets", "sealed")
    secrets = open_sealed(message.sealed, message.binding(), relay_keys, message.operation)
    assert secrets.new_password is not None  # noqa: S101 - Secrets.parse guarantees it
    if message.operation is Operation.CHANGE:
        assert secrets.old_password is not None  # noqa: S101 - Secrets.parse guarantees it
        return ChangePassword(message.user, secrets.old_password, secrets.new_password)
    assert message.initiator is not None  # noqa: S101 - RequestMessage.parse guarantees it
    return ResetPassword(
        message.user,
        secrets.new_password,
        message.initiator,
        unlock=message.unlock,
        force_change_at_next_logon=message.force_change_at_next_logon,
    )


# -- outcomes and heartbeats: the relay signs, the cloud verifies ---------------------------
def sign_outcome(message: OutcomeMessage, relay_key: ECKey) -> str:
    return sign(message.to_payload(), relay_key, OUTCOME_TYPE)


def verify_outcome(token: object, relay_keys: KeySet) -> OutcomeMessage:
    """A relay's outcome, signed by a key of the very relay it names."""
    kid, payload = verify(token, relay_keys, OUTCOME_TYPE)
    message = OutcomeMessage.parse(payload)
    _check_signer(kid, message.relay)
    return message


def sign_heartbeat(message: Heartbeat, relay_key: ECKey) -> str:
    return sign(message.to_payload(), relay_key, HEARTBEAT_TYPE)


def verify_heartbeat(token: object, relay_keys: KeySet) -> Heartbeat:
    kid, payload = verify(token, relay_keys, HEARTBEAT_TYPE)
    message = Heartbeat.parse(payload)
    _check_signer(kid, message.relay)
    return message


def _check_signer(kid: str, relay: str) -> None:
    # Relay kids are "<relay>.<use>.<thumbprint>": one relay cannot speak for another.
    if kid.split(".", 1)[0] != relay:
        raise ProtocolError(INVALID_SIGNATURE, f"signed by {kid!r}, not by relay {relay!r}")
