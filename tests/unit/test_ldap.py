"""The connection layer's pure parts: exception mapping, bind diagnostics, DC selection."""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from ldap3.core import exceptions as ldap_exc

from writeback.errors import (
    DirectoryAccessDenied,
    DirectoryError,
    DirectoryProtocolError,
    DirectoryUnavailable,
    DirectoryWriteUnknown,
)
from writeback.relay import ldap
from writeback.relay.ldap import Link
from writeback.relay.settings import DirectorySettings, ServerAddress
from writeback.testing import FakeLink, domain_controller

NC = "DC=example,DC=test"


def ldap3_exceptions() -> list[type[BaseException]]:
    """Every exception class ldap3 defines."""
    return [
        cls
        for _, cls in inspect.getmembers(ldap_exc, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == ldap_exc.__name__
    ]


def instantiate(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, ldap_exc.LDAPOperationResult):
        return cls(result=80, description="other", message="boom")
    try:
        return cls("boom")
    except TypeError:
        return cls()


class TestTranslateLdapError:
    @pytest.mark.parametrize("cls", ldap3_exceptions(), ids=lambda c: c.__name__)
    def test_every_ldap3_exception_is_mapped(self, cls: type[BaseException]) -> None:
        """Whatever ldap3 raises becomes one of our DirectoryErrors, naming the DC."""
        translated = ldap.translate_ldap_error(instantiate(cls), "ldaps://dc1")
        assert isinstance(translated, DirectoryError)
        assert str(translated).startswith("ldaps://dc1: ")

    @pytest.mark.parametrize(
        "cls",
        [
            ldap_exc.LDAPSocketOpenError,
            ldap_exc.LDAPSocketReceiveError,
            ldap_exc.LDAPSocketSendError,
            ldap_exc.LDAPSessionTerminatedByServerError,
            ldap_exc.LDAPResponseTimeoutError,
            ldap_exc.LDAPStartTLSError,
            ldap_exc.LDAPCertificateError,
        ],
        ids=lambda c: c.__name__,
    )
    def test_connection_failures_are_unavailable(self, cls: type[BaseException]) -> None:
        """Socket, timeout and TLS failures mean the DC is unavailable (fail over, retry later)."""
        assert isinstance(ldap.translate_ldap_error(cls("x"), "dc"), DirectoryUnavailable)

    def test_standard_library_failures_are_unavailable(self) -> None:
        """ssl and socket errors that escape ldap3 are unavailability too."""
        assert isinstance(ldap.translate_ldap_error(ssl.SSLError("x"), "dc"), DirectoryUnavailable)
        assert isinstance(
            ldap.translate_ldap_error(ConnectionResetError(), "dc"), DirectoryUnavailable
        )

    def test_certificate_failures_say_so(self) -> None:
        """An untrusted certificate is named as such, not as a generic socket error."""
        error = ldap_exc.LDAPSocketOpenError(
            "socket ssl wrapping error: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
        )
        assert "TLS certificate not trusted" in str(ldap.translate_ldap_error(error, "dc"))

    def test_bind_failures_are_access_denied(self) -> None:
        """A refused bind is the relay account's problem: directory.access_denied, decoded."""
        error = ldap_exc.LDAPInvalidCredentialsResult(
            result=49,
            description="invalidCredentials",
            message="80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, "
            "data 775, v1db1\x00",
        )
        translated = ldap.translate_ldap_error(error, "dc")
        assert isinstance(translated, DirectoryAccessDenied)
        assert "account locked out (data 775)" in str(translated)

    def test_other_results_are_protocol_errors(self) -> None:
        """An unexpected LDAP result is directory.error."""
        error = ldap_exc.LDAPOperationsErrorResult(result=1, description="operationsError")
        assert isinstance(ldap.translate_ldap_error(error, "dc"), DirectoryProtocolError)

    def test_our_own_errors_pass_through(self) -> None:
        """A DirectoryError is returned as it is."""
        error = DirectoryUnavailable("already ours")
        assert ldap.translate_ldap_error(error, "dc") is error


class TestWriteWithoutAnswer:
    class Broken:
        """A connection whose modify fails with `error` (what ldap3 raises mid-operation)."""

        def __init__(self, error: BaseException) -> None:
            self.error = error
            self.request: object = "the last request"

        def modify(self, *args: object, **kwargs: object) -> None:
            raise self.error

    def link(self, error: BaseException) -> Link:
        link = object.__new__(Link)
        link.address = ServerAddress("ldaps://dc1.example.test", "dc1.example.test", 636, True)
        link.connection = self.Broken(error)  # type: ignore[assignment]
        return link

    @pytest.mark.parametrize(
        "cls",
        [
            ldap_exc.LDAPSocketReceiveError,
            ldap_exc.LDAPSocketSendError,
            ldap_exc.LDAPSessionTerminatedByServerError,
            ldap_exc.LDAPResponseTimeoutError,
        ],
        ids=lambda c: c.__name__,
    )
    def test_a_write_that_left_and_got_no_answer_may_be_applied(
        self, cls: type[BaseException]
    ) -> None:
        """The connection broke once the modify was on its way: request.outcome_unknown, never
        "unavailable, try again" (the DC may have taken it), and no request kept."""
        link = self.link(cls("boom"))
        with pytest.raises(DirectoryWriteUnknown) as caught:
            link.modify("CN=u", {})
        assert caught.value.reason == "request.outcome_unknown"
        assert link.connection.request is None

    def test_a_write_that_never_left_is_unavailable(self) -> None:
        """A socket that was not open when the modify was to be sent: nothing reached the DC."""
        with pytest.raises(DirectoryUnavailable) as caught:
            self.link(ldap_exc.LDAPSocketOpenError("closed")).modify("CN=u", {})
        assert not isinstance(caught.value, DirectoryWriteUnknown)


class TestBindFailure:
    @pytest.mark.parametrize(("data", "meaning"), sorted(ldap.BIND_DATA.items()))
    def test_known_data_codes(self, data: str, meaning: str) -> None:
        """Every AcceptSecurityContext data code we know is spelled out."""
        message = (
            "80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, "
            f"data {data}, v4563"
        )
        assert ldap.describe_bind_failure(message) == f"{meaning} (data {data})"

    def test_unknown_message_is_kept(self) -> None:
        """An unrecognised message is shown as the DC sent it, without the trailing NUL."""
        assert ldap.describe_bind_failure("something else\x00") == "something else"


class TestDomainController:
    def test_hints_prefer_2239(self) -> None:
        """2239 is preferred over the deprecated 2066 when a DC advertises both."""
        both = domain_controller(
            NC, supported_controls=[ldap.POLICY_HINTS_OID, ldap.POLICY_HINTS_DEPRECATED_OID]
        )
        assert both.policy_hints_oid == ldap.POLICY_HINTS_OID

    def test_generalized_time(self) -> None:
        """The rootDSE's currentTime parses as UTC; garbage gives None."""
        parsed = ldap.parse_generalized_time("20261125115410.0Z")
        assert parsed is not None
        assert (parsed.hour, parsed.minute, parsed.second, parsed.utcoffset()) == (
            11,
            54,
            10,
            parsed.utcoffset(),
        )
        assert ldap.parse_generalized_time("yesterday") is None


class TestConnect:
    """Choosing a DC: the PDC emulator first, then configured order."""

    def settings(self, tmp_path: Path, *hosts: str) -> DirectorySettings:
        ca = tmp_path / "ca.pem"
        ca.write_text("ca")
        return DirectorySettings.from_mapping(
            {
                "servers": [f"ldaps://{host}" for host in hosts],
                "ca_file": str(ca),
                "bind_user": "svc@example.test",
                "scopes": [f"OU=Staff,{NC}"],
            }
        )

    def opener(
        self, links: dict[str, FakeLink | DirectoryError]
    ) -> tuple[Callable[[DirectorySettings, ServerAddress, str], Link], list[str]]:
        opened: list[str] = []

        def open_link(settings: DirectorySettings, address: ServerAddress, password: str) -> Link:
            opened.append(address.host)
            link = links[address.host]
            if isinstance(link, DirectoryError):
                raise link
            return link.connect(settings, password)

        return open_link, opened

    def test_prefers_the_pdc_over_earlier_dcs(self, tmp_path: Path) -> None:
        """A non-PDC listed first is closed once the PDC emulator answers."""
        first = FakeLink(domain_controller(NC, host="dc1.example.test", is_pdc=False))
        pdc = FakeLink(domain_controller(NC, host="pdc.example.test", is_pdc=True))
        open_link, opened = self.opener({"dc1.example.test": first, "pdc.example.test": pdc})
        chosen = ldap.connect(
            self.settings(tmp_path, "dc1.example.test", "pdc.example.test"), "pw", open_link
        )
        assert chosen is pdc
        assert first.closes == 1
        assert opened == ["dc1.example.test", "pdc.example.test"]

    def test_stops_at_the_pdc(self, tmp_path: Path) -> None:
        """Once the PDC emulator is bound, later DCs are not contacted."""
        pdc = FakeLink(domain_controller(NC, host="pdc.example.test", is_pdc=True))
        other = FakeLink(domain_controller(NC, host="dc2.example.test", is_pdc=False))
        open_link, opened = self.opener({"pdc.example.test": pdc, "dc2.example.test": other})
        assert (
            ldap.connect(
                self.settings(tmp_path, "pdc.example.test", "dc2.example.test"), "pw", open_link
            )
            is pdc
        )
        assert opened == ["pdc.example.test"]

    def test_falls_back_to_the_first_reachable_dc(self, tmp_path: Path) -> None:
        """With the PDC emulator unreachable, the first DC that answered is used; others closed."""
        second = FakeLink(domain_controller(NC, host="dc2.example.test", is_pdc=False))
        third = FakeLink(domain_controller(NC, host="dc3.example.test", is_pdc=False))
        open_link, _ = self.opener(
            {
                "pdc.example.test": DirectoryUnavailable("pdc: refused"),
                "dc2.example.test": second,
                "dc3.example.test": third,
            }
        )
        chosen = ldap.connect(
            self.settings(tmp_path, "pdc.example.test", "dc2.example.test", "dc3.example.test"),
            "pw",
            open_link,
        )
        assert chosen is second
        assert (second.closes, third.closes) == (0, 1)

    def test_nothing_reachable(self, tmp_path: Path) -> None:
        """No DC answering is DirectoryUnavailable naming every DC's problem."""
        open_link, _ = self.opener(
            {
                "a.example.test": DirectoryUnavailable("a: refused"),
                "b.example.test": DirectoryUnavailable("b: timed out"),
            }
        )
        with pytest.raises(DirectoryUnavailable, match="a: refused; b: timed out"):
            ldap.connect(
                self.settings(tmp_path, "a.example.test", "b.example.test"), "pw", open_link
            )

    def test_bind_refused_everywhere_is_access_denied(self, tmp_path: Path) -> None:
        """When the DCs answer but refuse the bind, the relay's account is the problem."""
        open_link, _ = self.opener(
            {
                "a.example.test": DirectoryAccessDenied("a: bind as svc refused: account disabled"),
            }
        )
        with pytest.raises(DirectoryAccessDenied, match="account disabled"):
            ldap.connect(self.settings(tmp_path, "a.example.test"), "pw", open_link)
