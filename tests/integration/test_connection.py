"""Connecting to DCs: TLS validation, StartTLS, bind failures and failover, on the real DC."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import seed
from devstack.tls import issue_server_certificate
from tests.testbed import TestBed
from writeback.protocol import ChangePassword, Reason, ResetPassword, Status
from writeback.relay.directory import LdapDirectory

NEW = "Connection-Pa55!"
NewUser = Callable[..., seed.Account]


class TestTls:
    def test_start_tls_on_port_389(self, testbed: TestBed, new_user: NewUser) -> None:
        """ldap:// with start_tls upgrades before the bind, and writes work over it."""
        directory = testbed.directory(servers=["ldap://localhost:389"], start_tls=True)
        try:
            assert directory.apply(ResetPassword(new_user().upn, NEW)).reason is Reason.APPLIED
        finally:
            directory.close()

    def test_untrusted_certificate_is_refused(
        self, testbed: TestBed, new_user: NewUser, tmp_path: Path
    ) -> None:
        """A DC whose certificate does not chain to the configured CA is never bound to."""
        other_ca = issue_server_certificate(tmp_path, ["elsewhere.example.test"]).ca_file
        directory = testbed.directory(ca_file=str(other_ca))
        try:
            outcome = directory.apply(ResetPassword(new_user().upn, NEW))
        finally:
            directory.close()
        assert (outcome.status, outcome.reason) == (Status.FAILED, Reason.DIRECTORY_UNAVAILABLE)
        assert "certificate" in outcome.detail

    def test_name_not_in_certificate_is_refused(self, testbed: TestBed, new_user: NewUser) -> None:
        """The same DC reached by an address its certificate does not name is refused."""
        directory = testbed.directory(servers=["ldaps://127.0.0.1:636"])
        try:
            outcome = directory.apply(ResetPassword(new_user().upn, NEW))
        finally:
            directory.close()
        assert outcome.reason is Reason.DIRECTORY_UNAVAILABLE
        assert "certificate" in outcome.detail
        assert "127.0.0.1" in outcome.detail


class TestBind:
    def test_wrong_service_password(self, testbed: TestBed, new_user: NewUser) -> None:
        """A refused bind is directory.access_denied and names why, without the password."""
        directory = LdapDirectory(testbed.settings(), "Not-The-Relay-Pa55!")
        try:
            outcome = directory.apply(ResetPassword(new_user().upn, NEW))
        finally:
            directory.close()
        assert outcome.reason is Reason.DIRECTORY_ACCESS_DENIED
        assert "wrong user name or password" in outcome.detail
        assert "Not-The-Relay-Pa55!" not in outcome.detail


class TestFailover:
    def test_skips_a_dead_dc(self, testbed: TestBed, new_user: NewUser) -> None:
        """With the first DC down, the relay binds to the next one and says which."""
        directory = testbed.directory(servers=["ldaps://localhost:1", testbed.dc.ldaps_url])
        try:
            outcome = directory.apply(ResetPassword(new_user().upn, NEW))
            capabilities = directory.capabilities()
        finally:
            directory.close()
        assert outcome.reason is Reason.APPLIED
        assert capabilities.dc == testbed.dc.ldaps_url
        assert capabilities.is_pdc
        assert capabilities.dc_host == testbed.dc.names.dc_hostname

    def test_all_dcs_down_is_an_outcome(self, testbed: TestBed, new_user: NewUser) -> None:
        """No reachable DC gives directory.unavailable naming each DC, not an exception."""
        user = new_user()
        directory = testbed.directory(servers=["ldaps://localhost:1", "ldaps://localhost:2"])
        try:
            outcome = directory.apply(ChangePassword(user.upn, user.password, NEW))
        finally:
            directory.close()
        assert (outcome.status, outcome.reason) == (Status.FAILED, Reason.DIRECTORY_UNAVAILABLE)
        assert "localhost:1" in outcome.detail
        assert "localhost:2" in outcome.detail

    def test_reconnects_after_the_connection_drops(
        self, testbed: TestBed, new_user: NewUser
    ) -> None:
        """A connection closed under the relay is replaced on the next operation."""
        directory = testbed.directory()
        try:
            assert directory.apply(ResetPassword(new_user().upn, NEW)).reason is Reason.APPLIED
            link = directory._link
            assert link is not None
            link.connection.socket.close()  # what a DC restart or an idle timeout looks like
            assert directory.apply(ResetPassword(new_user().upn, NEW)).reason is Reason.APPLIED
        finally:
            directory.close()


class TestNoSecrets:
    def test_no_password_in_logs_or_outcomes(
        self, testbed: TestBed, new_user: NewUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every path that logs or describes an outcome keeps passwords out of it."""
        caplog.set_level(logging.DEBUG)
        secrets = ["Secret-Reset-Pa55!", "Secret-Wrong-Old!1", "Secret-Change-Pa55!", "short"]
        user = new_user()
        directory = testbed.directory(servers=["ldaps://localhost:1", testbed.dc.ldaps_url])
        weak = LdapDirectory(testbed.settings(testbed.domain.no_rights), "Secret-Bind-Pa55!")
        try:
            outcomes = [
                directory.apply(ResetPassword(user.upn, secrets[0])),
                directory.apply(ChangePassword(user.upn, secrets[1], secrets[2])),
                directory.apply(ChangePassword(user.upn, secrets[0], secrets[2])),
                directory.apply(ResetPassword(user.upn, secrets[3])),
                weak.apply(ResetPassword(user.upn, secrets[0])),
            ]
        finally:
            directory.close()
            weak.close()
        text = (
            caplog.text
            + "".join(f"{o.detail} {o.message} {o!r}" for o in outcomes)
            + "".join(repr(r.__dict__) for r in caplog.records)
        )
        assert [o.reason for o in outcomes] == [
            Reason.APPLIED,
            Reason.OLD_PASSWORD_MISMATCH,
            Reason.APPLIED,
            Reason.POLICY_LENGTH,
            Reason.DIRECTORY_ACCESS_DENIED,
        ]
        for secret in [*secrets, "Secret-Bind-Pa55!", testbed.domain.relay.password]:
            assert secret not in text
        assert caplog.records  # the run did log something


class TestBaseDn:
    def test_an_ou_as_base_dn_is_refused(self, testbed: TestBed, new_user: NewUser) -> None:
        """base_dn must be the domain head: an OU would silently turn the policy pre-check off."""
        directory = testbed.directory(base_dn=testbed.domain.users_ou)
        try:
            outcome = directory.apply(ResetPassword(new_user().upn, "a"))
        finally:
            directory.close()
        assert outcome.reason is Reason.DIRECTORY_ERROR
        assert "directory.base_dn" in outcome.detail

    def test_the_domain_head_as_base_dn(self, testbed: TestBed, new_user: NewUser) -> None:
        """Naming the domain head explicitly works like leaving base_dn unset."""
        directory = testbed.directory(base_dn=testbed.domain.base_dn)
        try:
            assert directory.apply(ResetPassword(new_user().upn, "x")).reason is (
                Reason.POLICY_LENGTH
            )
        finally:
            directory.close()
