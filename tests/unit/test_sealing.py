"""Sealed, signed messages: round trips, tampering, expiry, binding, keys and rotation."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, KeySet, RSAKey

from writeback import sealing
from writeback.errors import ConfigurationError, ProtocolError
from writeback.protocol import (
    ChangePassword,
    ExpirePassword,
    Initiator,
    Operation,
    Reason,
    ResetPassword,
    UnlockAccount,
)
from writeback.protocol.messages import Heartbeat, OutcomeMessage, RequestMessage, Secrets

DOMAIN = "corp.example.test"
NOW = 1_800_000_000
PASSWORD = "Sealed-Pa55word!"
OLD = "Old-Pa55word!"
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclasses.dataclass(frozen=True)
class Keys:
    """Two relays of one domain (one with a second, rotated-in key), a third of another domain,
    and two cloud signing keys."""

    relay_a: RSAKey
    relay_a_next: RSAKey
    relay_b: RSAKey
    other_domain: RSAKey
    relay_a_sig: ECKey
    relay_b_sig: ECKey
    cloud: ECKey
    cloud_next: ECKey

    @staticmethod
    def public(*keys: Any) -> KeySet:
        return KeySet([type(k).import_key(k.as_dict(private=False)) for k in keys])


@pytest.fixture(scope="module")
def keys() -> Keys:
    def rsa(kid: str) -> RSAKey:
        return RSAKey.generate_key(3072, parameters={"kid": kid, "use": "enc"})

    def ec(kid: str) -> ECKey:
        return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"})

    return Keys(
        rsa("relay-a.enc.1"),
        rsa("relay-a.enc.2"),
        rsa("relay-b.enc.1"),
        rsa("relay-x.enc.1"),
        ec("relay-a.sig.1"),
        ec("relay-b.sig.1"),
        ec("cloud.sig.1"),
        ec("cloud.sig.2"),
    )


def request(operation: Operation = Operation.RESET, **changes: Any) -> RequestMessage:
    base = RequestMessage(
        id="req-0001",
        domain=DOMAIN,
        operation=operation,
        user="alice@corp.example.test",
        issued_at=NOW,
        expires_at=NOW + 120,
        initiator=Initiator.SELF_SERVICE if operation is Operation.RESET else None,
    )
    return dataclasses.replace(base, **changes)


def secrets_for(operation: Operation) -> Secrets | None:
    if operation in (Operation.UNLOCK, Operation.EXPIRE):
        return None
    old = OLD if operation is Operation.CHANGE else None
    return Secrets(new_password=PASSWORD, old_password=old)


def sealed_token(keys: Keys, message: RequestMessage | None = None, *relays: RSAKey) -> str:
    message = message or request()
    recipients = Keys.public(*(relays or (keys.relay_a, keys.relay_b)))
    return sealing.seal_request(message, secrets_for(message.operation), recipients, keys.cloud)


def relay_opens(keys: Keys, token: str, *private: Any, domain: str = DOMAIN) -> Any:
    verified = sealing.verify_request(token, Keys.public(keys.cloud, keys.cloud_next), domain, NOW)
    return sealing.open_request(verified, KeySet(list(private or [keys.relay_a])))


def flip_bit(segment: str, position: int) -> str:
    """Flip one bit of the bytes a base64url segment encodes (not of its padding bits)."""
    data = bytearray(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    data[position % len(data)] ^= 1 << (position % 8)
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()


class TestRoundTrip:
    @pytest.mark.parametrize("operation", list(Operation))
    def test_every_operation(self, keys: Keys, operation: Operation) -> None:
        """Reset, change, unlock and expire survive seal, sign, verify and open, field for field."""
        token = sealed_token(keys, request(operation))
        command = relay_opens(keys, token)
        expected = {
            Operation.RESET: ResetPassword("alice@corp.example.test", PASSWORD),
            Operation.CHANGE: ChangePassword("alice@corp.example.test", OLD, PASSWORD),
            Operation.UNLOCK: UnlockAccount("alice@corp.example.test"),
            Operation.EXPIRE: ExpirePassword("alice@corp.example.test"),
        }[operation]
        assert command == expected

    def test_admin_reset_flags(self, keys: Keys) -> None:
        """Initiator, unlock and force-change travel with the request."""
        message = request(initiator=Initiator.ADMIN, unlock=True, force_change_at_next_logon=True)
        command = relay_opens(keys, sealed_token(keys, message))
        assert command == ResetPassword(
            "alice@corp.example.test",
            PASSWORD,
            Initiator.ADMIN,
            unlock=True,
            force_change_at_next_logon=True,
        )

    def test_any_relay_of_the_domain_opens(self, keys: Keys) -> None:
        """Sealed to two relays, each opens with its own key alone."""
        token = sealed_token(keys)
        assert relay_opens(keys, token, keys.relay_a) == relay_opens(keys, token, keys.relay_b)

    @given(
        password=st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            min_size=1,
            max_size=120,
        )
    )
    @FAST
    def test_any_password(self, keys: Keys, password: str) -> None:
        """Any password the protocol allows comes out exactly as it went in."""
        token = sealing.seal_request(
            request(), Secrets(new_password=password), Keys.public(keys.relay_a), keys.cloud
        )
        assert relay_opens(keys, token).new_password == password

    def test_outcome_and_heartbeat(self, keys: Keys) -> None:
        """Outcomes and heartbeats verify against the relay's public signing key."""
        outcome = OutcomeMessage(
            "req-0001", DOMAIN, "relay-a", Reason.POLICY_LENGTH, "Too short.", "7 < 8", NOW, 41
        )
        heartbeat = Heartbeat("relay-a", DOMAIN, "0.1.0", NOW, {"policyHints": False}, None, None)
        public = Keys.public(keys.relay_a_sig, keys.relay_b_sig)
        assert (
            sealing.verify_outcome(sealing.sign_outcome(outcome, keys.relay_a_sig), public)
            == outcome
        )
        assert (
            sealing.verify_heartbeat(sealing.sign_heartbeat(heartbeat, keys.relay_a_sig), public)
            == heartbeat
        )


class TestTampering:
    @given(position=st.integers(min_value=0, max_value=10_000), part=st.sampled_from([0, 1, 2]))
    @FAST
    def test_any_flipped_bit_in_a_request(self, keys: Keys, position: int, part: int) -> None:
        """A bit flipped in the header, payload or signature is an invalid signature."""
        segments = sealed_token(keys).split(".")
        segments[part] = flip_bit(segments[part], position)
        with pytest.raises(ProtocolError) as caught:
            relay_opens(keys, ".".join(segments))
        assert caught.value.reason == Reason.REQUEST_INVALID_SIGNATURE

    @given(
        position=st.integers(min_value=0, max_value=10_000),
        member=st.sampled_from(["protected", "iv", "ciphertext", "tag", "encrypted_key"]),
    )
    @FAST
    def test_any_flipped_bit_in_the_sealed_secrets(
        self, keys: Keys, position: int, member: str
    ) -> None:
        """A bit flipped anywhere in the JWE makes it undecryptable, never a wrong password."""
        message = request()
        sealed = sealing.seal(
            Secrets(new_password=PASSWORD), message.binding(), Keys.public(keys.relay_a)
        )
        tampered = json.loads(json.dumps(sealed))
        if member == "encrypted_key":
            recipient = tampered["recipients"][0]
            recipient["encrypted_key"] = flip_bit(recipient["encrypted_key"], position)
        else:
            tampered[member] = flip_bit(tampered[member], position)
        with pytest.raises(ProtocolError) as caught:
            sealing.open_sealed(
                tampered, message.binding(), KeySet([keys.relay_a]), Operation.RESET
            )
        assert caught.value.reason == Reason.REQUEST_UNDECRYPTABLE

    def test_outcome_signed_by_another_relay(self, keys: Keys) -> None:
        """Relay b cannot sign an outcome in relay a's name."""
        outcome = OutcomeMessage("req-0001", DOMAIN, "relay-a", Reason.APPLIED, "ok", "", NOW, 1)
        token = sealing.sign_outcome(outcome, keys.relay_b_sig)
        with pytest.raises(ProtocolError, match="not by relay"):
            sealing.verify_outcome(token, Keys.public(keys.relay_a_sig, keys.relay_b_sig))

    def test_an_outcome_is_not_a_request(self, keys: Keys) -> None:
        """A validly signed message of another kind is refused by its typ."""
        outcome = OutcomeMessage("req-0001", DOMAIN, "cloud", Reason.APPLIED, "ok", "", NOW, 1)
        token = sealing.sign_outcome(outcome, keys.cloud)
        with pytest.raises(ProtocolError) as caught:
            relay_opens(keys, token)
        assert caught.value.reason == Reason.REQUEST_INVALID_SIGNATURE


class TestBinding:
    def test_expired(self, keys: Keys) -> None:
        """A request past its expiry is refused before anything is opened."""
        token = sealed_token(keys, request(expires_at=NOW - 1, issued_at=NOW - 60))
        with pytest.raises(ProtocolError) as caught:
            relay_opens(keys, token)
        assert caught.value.reason == Reason.REQUEST_EXPIRED

    def test_issued_in_the_future(self, keys: Keys) -> None:
        """A request issued beyond the allowed clock skew is refused."""
        token = sealed_token(keys, request(issued_at=NOW + 600, expires_at=NOW + 700))
        with pytest.raises(ProtocolError, match="future"):
            relay_opens(keys, token)

    def test_other_domain_relay_cannot_open(self, keys: Keys) -> None:
        """A request for domain A is refused by a relay of domain B, even with its key."""
        token = sealed_token(keys, None, keys.relay_a, keys.other_domain)
        with pytest.raises(ProtocolError) as caught:
            relay_opens(keys, token, keys.other_domain, domain="other.example.test")
        assert caught.value.reason == Reason.REQUEST_UNDECRYPTABLE

    @pytest.mark.parametrize(
        "change",
        [
            {"id": "req-0002"},
            {"user": "mallory@corp.example.test"},
            {"domain": "other.example.test"},
            {"expires_at": NOW + 300},
            {"operation": Operation.CHANGE, "initiator": None},
        ],
        ids=["id", "user", "domain", "expiry", "operation"],
    )
    def test_sealed_secrets_cannot_be_moved(self, keys: Keys, change: dict[str, Any]) -> None:
        """Secrets sealed for one request are refused in a request differing in any bound field."""
        original = request()
        sealed = sealing.seal(
            Secrets(new_password=PASSWORD), original.binding(), Keys.public(keys.relay_a)
        )
        moved = dataclasses.replace(original, sealed=sealed, **change)
        with pytest.raises(ProtocolError) as caught:
            sealing.open_sealed(sealed, moved.binding(), KeySet([keys.relay_a]), moved.operation)
        assert caught.value.reason == Reason.REQUEST_UNDECRYPTABLE

    def test_rewriting_the_aad_breaks_the_tag(self, keys: Keys) -> None:
        """Replacing the JWE's aad with another request's binding fails authentication."""
        original, other = request(), request(id="req-0002")
        sealed = sealing.seal(
            Secrets(new_password=PASSWORD), original.binding(), Keys.public(keys.relay_a)
        )
        forged = {**sealed, "aad": base64.urlsafe_b64encode(other.binding()).rstrip(b"=").decode()}
        with pytest.raises(ProtocolError, match="cannot decrypt"):
            sealing.open_sealed(forged, other.binding(), KeySet([keys.relay_a]), Operation.RESET)


class TestKeys:
    def test_unknown_cloud_key(self, keys: Keys) -> None:
        """A request signed by a key the relay does not trust is an invalid signature."""
        token = sealed_token(keys)
        with pytest.raises(ProtocolError) as caught:
            sealing.verify_request(token, Keys.public(keys.cloud_next), DOMAIN, NOW)
        assert caught.value.reason == Reason.REQUEST_INVALID_SIGNATURE

    def test_relay_not_among_recipients(self, keys: Keys) -> None:
        """A relay whose key was revoked (not sealed to) cannot open the request."""
        token = sealed_token(keys, None, keys.relay_b)
        with pytest.raises(ProtocolError, match="none of this relay's keys"):
            relay_opens(keys, token, keys.relay_a)

    def test_revoked_relay_signing_key(self, keys: Keys) -> None:
        """An outcome signed by a key removed from the domain's JWKS is refused."""
        outcome = OutcomeMessage("req-0001", DOMAIN, "relay-b", Reason.APPLIED, "ok", "", NOW, 1)
        token = sealing.sign_outcome(outcome, keys.relay_b_sig)
        with pytest.raises(ProtocolError, match="unknown key"):
            sealing.verify_outcome(token, Keys.public(keys.relay_a_sig))

    def test_relay_rotation_with_overlap(self, keys: Keys) -> None:
        """During rotation the cloud seals to old and new keys; a relay holding either opens it,
        and after rotation a relay with both keys opens requests sealed to the new one only."""
        overlap = sealed_token(keys, None, keys.relay_a, keys.relay_a_next)
        assert relay_opens(keys, overlap, keys.relay_a).new_password == PASSWORD
        assert relay_opens(keys, overlap, keys.relay_a_next).new_password == PASSWORD
        after = sealed_token(keys, None, keys.relay_a_next)
        assert relay_opens(keys, after, keys.relay_a, keys.relay_a_next).new_password == PASSWORD

    def test_cloud_rotation_with_overlap(self, keys: Keys) -> None:
        """Relays trusting both cloud keys accept requests signed by either."""
        message = request()
        for cloud in (keys.cloud, keys.cloud_next):
            token = sealing.seal_request(
                message, secrets_for(message.operation), Keys.public(keys.relay_a), cloud
            )
            assert relay_opens(keys, token).new_password == PASSWORD

    def test_no_relay_key_registered(self, keys: Keys) -> None:
        """Sealing with no encryption key at all is refused, not sent unreadable."""
        with pytest.raises(ProtocolError, match="no relay encryption key"):
            sealing.seal(Secrets(new_password=PASSWORD), b"x", Keys.public(keys.relay_a_sig))


class TestHostileInput:
    @given(
        token=st.one_of(
            st.text(max_size=300),
            st.binary(max_size=300),
            st.integers(),
            st.none(),
            st.lists(st.integers(), max_size=3),
        )
    )
    @FAST
    def test_garbage_is_only_ever_a_protocol_error(self, keys: Keys, token: Any) -> None:
        """Whatever arrives, verify_request raises ProtocolError and nothing else."""
        with pytest.raises(ProtocolError):
            sealing.verify_request(token, Keys.public(keys.cloud), DOMAIN, NOW)

    @given(
        payload=st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "v",
                            "type",
                            "id",
                            "domain",
                            "operation",
                            "user",
                            "iat",
                            "exp",
                            "initiator",
                            "unlock",
                            "forceChangeAtNextLogon",
                            "sealed",
                            "traceparent",
                            "x",
                        ]
                    ),
                    children,
                    max_size=14,
                )
            ),
            max_leaves=30,
        )
    )
    @FAST
    def test_signed_garbage_is_only_ever_a_protocol_error(self, keys: Keys, payload: Any) -> None:
        """A validly signed but malformed payload is request.malformed, never a crash."""
        token = sealing.sign(
            {"p": payload} if not isinstance(payload, dict) else payload,
            keys.cloud,
            sealing.REQUEST_TYPE,
        )
        with pytest.raises(ProtocolError) as caught:
            relay_opens(keys, token)
        assert caught.value.reason in (
            Reason.REQUEST_MALFORMED,
            Reason.REQUEST_UNDECRYPTABLE,
            Reason.REQUEST_EXPIRED,
        )

    def test_oversize_token(self, keys: Keys) -> None:
        """A message above the size limit is refused before any parsing."""
        with pytest.raises(ProtocolError, match="acceptable size"):
            sealing.verify_request("a" * 70_000, Keys.public(keys.cloud), DOMAIN, NOW)

    @pytest.mark.parametrize(
        "sealed",
        [
            {},
            {"recipients": "x"},
            {"recipients": [{"header": "x"}]},
            {"recipients": [{"header": {"kid": "relay-a.enc.1"}}], "aad": "x"},
            {"recipients": [{"header": {"kid": ["relay-a.enc.1"]}}]},
            {"recipients": [{"header": {"kid": {"k": "relay-a.enc.1"}}}]},
        ],
    )
    def test_malformed_jwe(self, keys: Keys, sealed: dict[str, Any]) -> None:
        """A sealed member of the wrong shape is undecryptable, not a crash."""
        with pytest.raises(ProtocolError) as caught:
            sealing.open_sealed(sealed, b"x", KeySet([keys.relay_a]), Operation.RESET)
        assert caught.value.reason == Reason.REQUEST_UNDECRYPTABLE


class TestNoSecrets:
    def test_reprs_hide_passwords(self, keys: Keys) -> None:
        """No repr or str of a message, secrets or command shows a password."""
        token = sealed_token(keys, request(Operation.CHANGE))
        verified = sealing.verify_request(token, Keys.public(keys.cloud), DOMAIN, NOW)
        command = sealing.open_request(verified, KeySet([keys.relay_a]))
        shown = " ".join(
            [
                repr(verified),
                str(verified),
                repr(command),
                str(command),
                repr(Secrets(PASSWORD, OLD)),
                str(Secrets(PASSWORD, OLD)),
            ]
        )
        assert PASSWORD not in shown
        assert OLD not in shown

    @given(password=st.text(min_size=1, max_size=300))
    @FAST
    def test_errors_never_quote_a_password(self, keys: Keys, password: str) -> None:
        """A password the protocol refuses (NUL, too long) is never quoted in the error."""
        message = request()
        sealed = sealing.seal(
            Secrets(new_password=password + "\x00"), message.binding(), Keys.public(keys.relay_a)
        )
        with pytest.raises(ProtocolError) as caught:
            sealing.open_sealed(sealed, message.binding(), KeySet([keys.relay_a]), Operation.RESET)
        # The message is fixed text: nothing of the password is interpolated into it.
        assert str(caught.value) == "secrets.newPassword: contains a NUL character"

    def test_no_secret_in_logs(self, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
        """Sealing, opening and failing log nothing that holds a password or key."""
        caplog.set_level(logging.DEBUG)
        token = sealed_token(keys)
        relay_opens(keys, token)
        with pytest.raises(ProtocolError):
            relay_opens(keys, token, keys.relay_a_next)
        private = json.dumps(keys.relay_a.as_dict(private=True))
        for record in caplog.records:
            text = record.getMessage() + repr(record.__dict__)
            assert PASSWORD not in text
            assert keys.relay_a.as_dict(private=True)["d"] not in text
        assert '"d"' in private  # the check above looked for a real private member


class TestPublicKeyset:
    def test_imports_public_keys(self, keys: Keys) -> None:
        """A JWKS of public enc and sig keys imports with its kids."""
        jwks = {
            "keys": [keys.relay_a.as_dict(private=False), keys.relay_a_sig.as_dict(private=False)]
        }
        imported = sealing.public_keyset(jwks, "relay jwks")
        assert sorted(k.kid for k in imported.keys) == ["relay-a.enc.1", "relay-a.sig.1"]

    def test_private_material_is_refused(self, keys: Keys) -> None:
        """A JWKS that leaks a private key is refused, without quoting the key."""
        private = keys.relay_a.as_dict(private=True)
        with pytest.raises(ConfigurationError, match="private key material") as caught:
            sealing.public_keyset({"keys": [private]}, "relay jwks")
        assert str(private["d"]) not in str(caught.value)

    @pytest.mark.parametrize("problem", ["no kid", "duplicate", "bad use", "wrong type", "empty"])
    def test_malformed_jwks(self, keys: Keys, problem: str) -> None:
        """Missing kids, duplicates, unknown uses, mismatched key types and empty sets are named."""
        enc = dict(keys.relay_a.as_dict(private=False))
        sig = dict(keys.relay_a_sig.as_dict(private=False))
        jwks: dict[str, Any] = {
            "no kid": {"keys": [{k: v for k, v in enc.items() if k != "kid"}]},
            "duplicate": {"keys": [enc, enc]},
            "bad use": {"keys": [{**enc, "use": "wrap"}]},
            "wrong type": {"keys": [{**sig, "use": "enc"}]},
            "empty": {"keys": []},
        }[problem]
        with pytest.raises(ConfigurationError) as caught:
            sealing.public_keyset(jwks, "relay jwks")
        assert caught.value.setting == "relay jwks"
