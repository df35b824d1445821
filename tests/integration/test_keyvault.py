"""The Key Vault adapter: the real azure-keyvault-secrets SDK against devstack's stand-in vault."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.secrets.aio import SecretClient
from joserfc.jwk import ECKey

from devstack.keyvault import RESOURCE, TENANT, KeyVaultStandIn
from writeback.cloud.secrets import SIGNING_KEY_SECRET, CloudKeys, KeyVaultSecrets
from writeback.errors import SecretsUnavailable

# No retries: a test of an unreachable vault should fail in milliseconds, not after backoff.
FAST = {"retry_total": 0}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def cloud_jwk(kid: str) -> str:
    key = ECKey.generate_key("P-256", {"kid": kid, "use": "sig", "alg": "ES256"}, private=True)
    return json.dumps(key.as_dict(private=True))


def sdk_options(vault: KeyVaultStandIn) -> dict[str, Any]:
    """How any SecretClient reaches the stand-in: trust its CA, accept its challenge resource."""
    return {"connection_verify": str(vault.ca_file), "verify_challenge_resource": False, **FAST}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultStandIn]:
    with KeyVaultStandIn(tmp_path_factory.mktemp("keyvault")) as running:
        yield running


@pytest.fixture
async def source(vault: KeyVaultStandIn) -> AsyncIterator[KeyVaultSecrets]:
    secrets = KeyVaultSecrets(vault.url, vault.credential(), **sdk_options(vault))
    yield secrets
    await secrets.close()


class TestKeyVaultSecrets:
    async def test_set_with_the_sdk_then_get(
        self, vault: KeyVaultStandIn, source: KeyVaultSecrets
    ) -> None:
        """A secret the SDK stores is what the adapter reads, after the SDK's bearer challenge."""
        name, value = unique("set-get"), cloud_jwk("k1")
        credential = vault.credential()
        async with SecretClient(vault.url, credential, **sdk_options(vault)) as client:
            stored = await client.set_secret(name, value)
        assert stored.name == name
        assert await source.get(name) == value
        assert credential.requests == [((f"{RESOURCE}/.default",), TENANT)]

    async def test_latest_version_wins(
        self, vault: KeyVaultStandIn, source: KeyVaultSecrets
    ) -> None:
        """Each set makes a new version; the adapter reads the latest, older ones stay readable."""
        name = unique("versions")
        first = vault.set(name, "one")
        vault.set(name, "two")
        assert await source.get(name) == "two"
        async with SecretClient(vault.url, vault.credential(), **sdk_options(vault)) as client:
            assert (await client.get_secret(name, first)).value == "one"

    async def test_missing_secret_is_named(self, source: KeyVaultSecrets) -> None:
        """An unknown secret is SecretsUnavailable naming it, marked missing."""
        name = unique("missing")
        with pytest.raises(SecretsUnavailable) as raised:
            await source.get(name)
        assert (raised.value.secret, raised.value.missing) == (name, True)
        assert name in str(raised.value)

    async def test_refused_token(self, vault: KeyVaultStandIn) -> None:
        """A token the vault refuses is an authentication failure, not a missing secret."""
        name = unique("refused")
        vault.set(name, "value")
        wrong = KeyVaultSecrets(vault.url, vault.credential("not-the-token"), **sdk_options(vault))
        try:
            with pytest.raises(SecretsUnavailable, match="authentication") as raised:
                await wrong.get(name)
        finally:
            await wrong.close()
        assert not raised.value.missing

    async def test_untrusted_certificate(self, vault: KeyVaultStandIn) -> None:
        """Without the stand-in's CA the TLS handshake fails and the vault is unreachable."""
        name = unique("untrusted")
        options = {**sdk_options(vault), "connection_verify": True}
        untrusting = KeyVaultSecrets(vault.url, vault.credential(), **options)
        try:
            with pytest.raises(SecretsUnavailable, match="unreachable"):
                await untrusting.get(name)
        finally:
            await untrusting.close()


class TestCloudKeysOnKeyVault:
    async def test_rotation_is_picked_up_after_the_refresh_interval(
        self, vault: KeyVaultStandIn, source: KeyVaultSecrets
    ) -> None:
        """A new version of the signing key is used once the refresh interval has passed."""
        clock = Clock()
        vault.set(SIGNING_KEY_SECRET, cloud_jwk("cloud-1"))
        keys = CloudKeys(source, refresh_seconds=300, clock=clock)
        assert (await keys.signing_key()).kid == "cloud-1"
        vault.set(SIGNING_KEY_SECRET, cloud_jwk("cloud-2"))
        clock.now = 299
        assert (await keys.signing_key()).kid == "cloud-1"
        clock.now = 300
        assert (await keys.signing_key()).kid == "cloud-2"

    async def test_vault_down(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """When the vault goes down, cached keys serve through the grace time, then the error
        says the vault is unreachable; no secret value reaches a log line or an exception."""
        clock = Clock()
        value = cloud_jwk("cloud-down")
        seen: list[str] = []
        with caplog.at_level(logging.DEBUG):
            with KeyVaultStandIn(tmp_path) as down:
                down.set(SIGNING_KEY_SECRET, value)
                source = KeyVaultSecrets(down.url, down.credential(), **sdk_options(down))
                keys = CloudKeys(source, refresh_seconds=60, grace_seconds=120, clock=clock)
                await keys.signing_key()
            try:
                with pytest.raises(SecretsUnavailable, match="unreachable") as direct:
                    await source.get(SIGNING_KEY_SECRET)
                seen.append(str(direct.value))
                clock.now = 60 + 119
                assert (await keys.signing_key()).kid == "cloud-down"
                clock.now = 60 + 120
                with pytest.raises(SecretsUnavailable, match="unreachable") as late:
                    await keys.signing_key()
                seen.append(str(late.value))
                seen.append(repr(late.value.__cause__))
            finally:
                await keys.close()
        assert any(r.getMessage() == "keys_refresh_failed" for r in caplog.records)
        seen += [record.getMessage() for record in caplog.records]
        seen += [repr(record.__dict__) for record in caplog.records]
        private = json.loads(value)["d"]
        assert not [text for text in seen if private in text or value in text]


class TestNoSecretLeaks:
    async def test_no_value_in_any_log_line_or_error(
        self, vault: KeyVaultStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Setting, reading, rotating and missing secrets through the SDK never logs a value."""
        values = [cloud_jwk("leak-1"), cloud_jwk("leak-2")]
        errors: list[str] = []
        with caplog.at_level(logging.DEBUG):
            async with SecretClient(vault.url, vault.credential(), **sdk_options(vault)) as client:
                name = unique("leak")
                for value in values:
                    await client.set_secret(name, value)
            source = KeyVaultSecrets(vault.url, vault.credential(), **sdk_options(vault))
            try:
                assert await source.get(name) == values[-1]
                for missing in (unique("leak-missing"), name + "-x"):
                    with pytest.raises(SecretsUnavailable) as raised:
                        await source.get(missing)
                    errors += [str(raised.value), repr(raised.value.__cause__)]
            finally:
                await source.close()
        assert caplog.records, "the SDK logs its requests at DEBUG/INFO; capture must see them"
        texts = errors + [r.getMessage() for r in caplog.records]
        texts += [repr(r.__dict__) for r in caplog.records]
        secrets = values + [json.loads(value)["d"] for value in values]
        assert not [text for text in texts if any(secret in text for secret in secrets)]
