"""The Samba AD DC test bed for integration and e2e tests: one real DC per session, fresh users
per test (a pytest plugin, loaded by tests/conftest.py).

The DC is provisioned from devstack into a temporary directory, seeded, started with LDAPS on
loopback and stopped at the end of the session. Each test creates its own uniquely named users,
so tests never depend on each other's passwords, lockouts or history.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import ldap3
import pytest

from devstack import seed
from devstack.samba import SambaDC
from writeback.relay.directory import LdapDirectory
from writeback.relay.settings import DirectorySettings


@dataclasses.dataclass(frozen=True)
class TestBed:
    """The running DC and what was seeded into it."""

    __test__ = False  # not a test class, despite the name

    dc: SambaDC
    domain: seed.SeededDomain

    def settings(self, account: seed.Account | None = None, **overrides: Any) -> DirectorySettings:
        account = account or self.domain.relay
        table: dict[str, object] = {
            "servers": [self.dc.ldaps_url],
            "ca_file": str(self.dc.ca_file),
            "bind_user": account.upn,
            "scopes": [self.domain.users_ou],
        }
        table.update(overrides)
        return DirectorySettings.from_mapping(table)

    def directory(self, account: seed.Account | None = None, **overrides: Any) -> LdapDirectory:
        account = account or self.domain.relay
        return LdapDirectory(self.settings(account, **overrides), account.password)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBed]:
    dc = SambaDC(tmp_path_factory.mktemp("samba") / "dc")
    dc.provision()
    seed.set_domain_policy(dc)
    dc.start()
    try:
        yield TestBed(dc, seed.seed(dc))
    finally:
        dc.stop()


@pytest.fixture(scope="session")
def _admin_connections(testbed: TestBed) -> Iterator[list[ldap3.Connection]]:
    """The administrator's connection, shared by the session's tests (replaced when dead)."""
    connections = [testbed.dc.admin_connection()]
    yield connections
    connections[-1].unbind()


@pytest.fixture
def admin(testbed: TestBed, _admin_connections: list[ldap3.Connection]) -> ldap3.Connection:
    """A live administrator connection: the session's, or a new one when the DC was restarted
    since (the chaos soak restarts it), checked with a read of the RootDSE."""
    connection = _admin_connections[-1]
    try:
        alive = connection.search("", "(objectClass=*)", ldap3.BASE, attributes=["currentTime"])
    except ldap3.core.exceptions.LDAPException:
        alive = False
    if not alive:
        with contextlib.suppress(ldap3.core.exceptions.LDAPException):
            connection.unbind()
        _admin_connections.append(testbed.dc.admin_connection())
    return _admin_connections[-1]


@pytest.fixture(scope="session")
def directory(testbed: TestBed) -> Iterator[LdapDirectory]:
    """The directory layer bound as the seeded relay account (exactly the delegated rights)."""
    directory = testbed.directory()
    yield directory
    directory.close()


@pytest.fixture
def new_user(testbed: TestBed, admin: ldap3.Connection) -> Callable[..., seed.Account]:
    """Create a uniquely named user in the writeback OU (or `ou=`), with a known password."""

    def create(prefix: str = "user", ou: str | None = None, **options: Any) -> seed.Account:
        return seed.create_user(
            admin,
            ou or testbed.domain.users_ou,
            testbed.domain.dns_domain,
            seed.unique_name(prefix),
            **options,
        )

    return create


@pytest.fixture
def read(admin: ldap3.Connection) -> Callable[[str, list[str]], dict[str, str]]:
    """Read attributes of a DN as the administrator (first value of each, as text)."""

    def attributes(dn: str, names: list[str]) -> dict[str, str]:
        admin.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=names)
        raw = admin.response[0]["raw_attributes"]
        return {name: raw[name][0].decode() if raw.get(name) else "" for name in names}

    return attributes


@pytest.fixture
def can_bind(testbed: TestBed) -> Callable[[seed.Account, str], bool]:
    """Whether a user can bind with a password (the DC's own verdict on the password)."""

    def bind(account: seed.Account, password: str) -> bool:
        try:
            testbed.dc.connection(account.upn, password).unbind()
        except ldap3.core.exceptions.LDAPBindError:
            return False
        return True

    return bind
