"""Account references: every form Entra and AD hand out is told apart by syntax and spelled one
canonical way; anything else is refused with what was expected."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from writeback.protocol.accounts import AccountRef, AnchorKind, BadReference, reference_problem
from writeback.relay.ldap import sid_bytes

pytestmark = pytest.mark.unit

GUID = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")


class TestForms:
    @pytest.mark.parametrize(
        ("text", "kind", "canonical"),
        [
            ("alice@corp.example.com", AnchorKind.UPN, "alice@corp.example.com"),
            ("s-1-5-21-1-2-3-1104", AnchorKind.SID, "S-1-5-21-1-2-3-1104"),
            (str(GUID).upper(), AnchorKind.GUID, str(GUID)),
            (base64.b64encode(GUID.bytes_le).decode(), AnchorKind.GUID, str(GUID)),
            ("corp\\alice", AnchorKind.SAM, "CORP\\alice"),
            ("CORP\\a@b", AnchorKind.SAM, "CORP\\a@b"),
        ],
    )
    def test_each_form_is_recognised_and_canonical(
        self, text: str, kind: AnchorKind, canonical: str
    ) -> None:
        """Each form parses to its kind and canonical spelling, which parses to itself."""
        ref = AccountRef.parse(text)
        assert (ref.kind, str(ref)) == (kind, canonical)
        assert AccountRef.parse(str(ref)) == ref

    def test_the_immutable_id_is_the_guid_in_ad_byte_order(self) -> None:
        """Graph's onPremisesImmutableId (base64 of objectGUID as AD stores it) is that GUID."""
        ref = AccountRef.parse(base64.b64encode(GUID.bytes_le).decode())
        assert ref.guid_bytes == GUID.bytes_le
        assert AccountRef.from_guid_bytes(GUID.bytes_le) == ref

    def test_parts(self) -> None:
        """A down-level name splits into NetBIOS domain and account; a SID gives its domain."""
        sam = AccountRef.parse("corp\\alice")
        assert (sam.netbios, sam.sam_account_name) == ("CORP", "alice")
        assert AccountRef.parse("S-1-5-21-1-2-3-1104").domain_sid == "S-1-5-21-1-2-3"


class TestRefused:
    @pytest.mark.parametrize(
        "text",
        [
            "",
            "alice",
            " alice@corp.example.com",
            "alice@",
            "S-1-5",
            "S-1-5-21-x",
            "S-1-5-21-1111-2222-3333-4294967296",  # a sub-authority is 32 bits
            "3f2504e0-4f89-41d3-9a0c-0305e82c330",
            "AAAAAAAAAAAAAAAAAAAAAAAA",  # 24 characters of base64 that are not 16 bytes
            "\\alice",
            "CORP\\",
            "CORP\\al/ice",
            "CORPORATIONWITHALONGNAME\\alice",
            "CORP\\ alice",
        ],
    )
    def test_not_a_reference(self, text: str) -> None:
        """Text in no form is refused, saying what was expected."""
        with pytest.raises(BadReference):
            AccountRef.parse(text)
        assert reference_problem(text)

    @given(st.text(max_size=80))
    def test_any_text_parses_or_is_refused_cleanly(self, text: str) -> None:
        """Whatever the text, the answer is a reference whose canonical form is stable, or a
        refusal: never another exception."""
        try:
            ref = AccountRef.parse(text)
        except BadReference:
            return
        assert AccountRef.parse(str(ref)) == ref


def test_every_sid_that_parses_has_a_binary_form() -> None:
    """What the API accepts as a SID the relay can always turn into objectSid's bytes (no
    OverflowError in the handler): the largest sub-authority and identifier authority fit."""
    ref = AccountRef.parse("S-1-5-21-4294967295-1-2-3")
    assert len(sid_bytes(str(ref))) == 8 + 4 * 5
