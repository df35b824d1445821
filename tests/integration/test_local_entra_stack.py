"""The sign-in stand-in as the local stack runs it: its configuration written from the Samba DC's
seeded users (devstack/entra_stack.py) and served by `python -m devstack.entra` as its own
process, its tokens naming the AD accounts' SIDs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from devstack import cloud, entra, entra_stack, entra_users, seed
from tests.integration.test_local_entra import StandIn, sign_in
from tests.testbed import TestBed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served(testbed: TestBed, tmp_path: Path) -> Iterator[StandIn]:
    """The stand-in process, once it answers its discovery document."""
    port = cloud.free_port()
    prepared = entra_stack.prepare(tmp_path / "entra", testbed.dc, testbed.domain, 7071, port)
    assert prepared.config.stat().st_mode & 0o077 == 0  # it holds the signing key
    log = (tmp_path / "entra.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, *prepared.argv()], cwd=cloud.ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    stand_in = StandIn(entra.load(prepared.config)[0], prepared.tls.ca_file)
    url = f"{stand_in.root}/v2.0/.well-known/openid-configuration"
    deadline = time.monotonic() + 30
    try:
        while True:
            assert process.poll() is None, (tmp_path / "entra.log").read_text()
            try:
                if stand_in.session().get(url, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the stand-in did not answer within 30s"
                time.sleep(0.1)  # not listening yet; polled against the deadline
        yield stand_in
    finally:
        cloud.stop_process(process)
        log.close()


def sid_of(testbed: TestBed, account: seed.Account) -> str:
    connection = testbed.dc.admin_connection()
    try:
        return seed.object_sid(connection, account.dn)
    finally:
        connection.unbind()


def test_tokens_name_the_dc_accounts(served: StandIn, testbed: TestBed) -> None:
    """alice's token carries her AD SID; pat signs in with a cloud UPN that differs from AD's
    and gets pat.obrien's SID; the seeded helpdesk user holds the admin role."""
    keys = KeySet.import_key_set(
        served.session().get(f"{served.root}/discovery/v2.0/keys", timeout=10).json()
    )
    users = testbed.domain.users
    cases = [
        (users["alice"].upn, "alice"),
        (f"pat@{entra_users.CLOUD_SUFFIX}", "pat.obrien"),
        (users["hana.helpdesk"].upn, "hana.helpdesk"),
    ]
    for username, sam in cases:
        tokens = sign_in(served, username, seed.SEED_PASSWORD)
        claims = jwt.decode(tokens["access_token"], keys).claims
        assert claims["onprem_sid"] == sid_of(testbed, users[sam])
        assert claims["preferred_username"] == username
        helpdesk = "Writeback.Reset.Admin" in claims["roles"]
        assert helpdesk == (sam == "hana.helpdesk")
