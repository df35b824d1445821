"""The cloud's keys: secret names, the local source, error mapping, settings and the cache."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from azure.core import exceptions as azure
from azure.identity import CredentialUnavailableError
from joserfc.jwk import ECKey, RSAKey

from writeback.cloud import secrets
from writeback.cloud.secrets import (
    SIGNING_KEY_SECRET,
    CloudKeys,
    CloudKeysSettings,
    KeyVaultSecrets,
    LocalSecrets,
    build_secret_source,
    check_resolved,
    relay_keys_secret,
    translate_keyvault_error,
)
from writeback.errors import ConfigurationError, SecretsUnavailable
from writeback.relay.keys import KeyStore

DOMAIN = "corp.example.test"
RELAYS = relay_keys_secret(DOMAIN)


def cloud_jwk(kid: str = "cloud-1") -> str:
    key = ECKey.generate_key("P-256", {"kid": kid, "use": "sig", "alg": "ES256"}, private=True)
    return json.dumps(key.as_dict(private=True))


def ec_jwk(curve: str, **parameters: str) -> str:
    key = ECKey.generate_key(curve, private=True)
    return json.dumps(key.as_dict(private=True) | parameters)


@pytest.fixture(scope="module")
def relay_export(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    """A real relay key store: its public JWKS is what `writeback-relay keys export` prints."""
    return KeyStore.init(tmp_path_factory.mktemp("relay") / "keys", "relay-a")


def private_values(text: str) -> list[str]:
    """The private members of every JWK in `text` (a JWK or a JWKS)."""
    document = json.loads(text)
    keys = document.get("keys", [document])
    return [key[m] for key in keys for m in ("d", "p", "q", "dp", "dq", "qi") if m in key]


@dataclass
class MemorySecrets:
    """An in-memory SecretSource that counts fetches and can fail or hold callers at a gate."""

    values: dict[str, str] = field(default_factory=dict)
    fetches: list[str] = field(default_factory=list)
    failure: SecretsUnavailable | None = None
    gate: asyncio.Event | None = None
    closed: bool = False

    async def get(self, name: str) -> str:
        self.fetches.append(name)
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        if name not in self.values:
            raise SecretsUnavailable(name, "not found", missing=True)
        return self.values[name]

    async def close(self) -> None:
        self.closed = True


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source(relay_export: KeyStore) -> MemorySecrets:
    return MemorySecrets(
        {SIGNING_KEY_SECRET: cloud_jwk(), RELAYS: json.dumps(relay_export.public_jwks())}
    )


@pytest.fixture
def keys(source: MemorySecrets, clock: Clock) -> CloudKeys:
    return CloudKeys(source, refresh_seconds=300, grace_seconds=600, retry_seconds=30, clock=clock)


class TestSecretNames:
    def test_signing_key_name(self) -> None:
        """The cloud's signing key lives in secret writeback-cloud-signing-key."""
        assert SIGNING_KEY_SECRET == "writeback-cloud-signing-key"

    @pytest.mark.parametrize(
        ("domain", "name"),
        [
            ("corp.example.test", "writeback-relays-corp-example-test"),
            ("Corp.Example.TEST", "writeback-relays-corp-example-test"),
            ("single", "writeback-relays-single"),
            ("my-company.local", "writeback-relays-my--company-local"),
            ("a-b.c", "writeback-relays-a--b-c"),
            ("a.b-c", "writeback-relays-a-b--c"),
        ],
    )
    def test_relay_keys_secret_per_domain(self, domain: str, name: str) -> None:
        """A domain's relay JWKS lives in writeback-relays-<domain, lower case, dashes doubled,
        dots as dashes>, so no two domains share a secret."""
        assert relay_keys_secret(domain) == name

    @pytest.mark.parametrize(
        "domain", ["", "corp_example.test", "corp..test", ".corp", "-corp.test", "a/b", "ü.test"]
    )
    def test_non_dns_domains_refused(self, domain: str) -> None:
        """Only DNS domain names make secret names; anything else is refused naming `domain`."""
        with pytest.raises(ConfigurationError) as raised:
            relay_keys_secret(domain)
        assert raised.value.setting == "domain"

    def test_name_length_is_key_vaults(self) -> None:
        """A domain whose secret name would pass Key Vault's 127 characters is refused."""
        label = "a" * 54
        fits = f"{label}.{label}"  # 109 characters: 17 + 109 = 126
        assert len(relay_keys_secret(fits)) == 126
        with pytest.raises(ConfigurationError):
            relay_keys_secret(fits + ".ab")


class TestLocalSecrets:
    @staticmethod
    def write(directory: Path, name: str, text: str, mode: int = 0o600) -> Path:
        path = directory / name
        path.write_text(text)
        path.chmod(mode)
        return path

    async def test_reads_one_file_per_secret(self, tmp_path: Path) -> None:
        """A secret is the text of the file named after it, without the trailing newline."""
        self.write(tmp_path, SIGNING_KEY_SECRET, '{"kty": "EC"}\n')
        assert await LocalSecrets(tmp_path).get(SIGNING_KEY_SECRET) == '{"kty": "EC"}'

    async def test_missing_file_names_the_secret(self, tmp_path: Path) -> None:
        """A missing file is a missing secret, named in the error."""
        with pytest.raises(SecretsUnavailable) as raised:
            await LocalSecrets(tmp_path).get(RELAYS)
        assert (raised.value.secret, raised.value.missing) == (RELAYS, True)
        assert RELAYS in str(raised.value)

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
    async def test_file_open_to_others_refused(self, tmp_path: Path, mode: int) -> None:
        """A file group or others can reach is refused, naming the setting, not its content."""
        self.write(tmp_path, SIGNING_KEY_SECRET, "top-secret-value", mode)
        with pytest.raises(ConfigurationError) as raised:
            await LocalSecrets(tmp_path).get(SIGNING_KEY_SECRET)
        assert raised.value.setting == "WRITEBACK_SECRETS_DIR"
        assert "chmod 600" in str(raised.value)
        assert "top-secret-value" not in str(raised.value)

    async def test_foreign_owner_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file another user owns is refused."""
        self.write(tmp_path, SIGNING_KEY_SECRET, "{}")
        monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
        with pytest.raises(ConfigurationError, match="owned by uid"):
            await LocalSecrets(tmp_path).get(SIGNING_KEY_SECRET)

    async def test_symlink_refused(self, tmp_path: Path) -> None:
        """A symbolic link is refused rather than followed."""
        target = self.write(tmp_path, "elsewhere", "{}")
        (tmp_path / SIGNING_KEY_SECRET).symlink_to(target)
        with pytest.raises(ConfigurationError, match="symbolic link"):
            await LocalSecrets(tmp_path).get(SIGNING_KEY_SECRET)

    async def test_directory_refused(self, tmp_path: Path) -> None:
        """A directory where a secret file should be is refused."""
        (tmp_path / SIGNING_KEY_SECRET).mkdir(mode=0o700)
        with pytest.raises(ConfigurationError, match="not a regular file"):
            await LocalSecrets(tmp_path).get(SIGNING_KEY_SECRET)

    @pytest.mark.parametrize("name", ["../outside", "a/b", "", "x" * 128, "with space"])
    async def test_names_outside_key_vaults_rule_refused(self, tmp_path: Path, name: str) -> None:
        """Only Key Vault secret names are read, so no name can leave the directory."""
        with pytest.raises(ConfigurationError):
            await LocalSecrets(tmp_path).get(name)


class _Response:
    """Just enough of an HTTP response for azure-core's HttpResponseError."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "test"
        self.headers: dict[str, str] = {}
        self.request = None

    def text(self) -> str:
        return ""


def _http(cls: type[azure.HttpResponseError], status: int) -> azure.HttpResponseError:
    return cls(message="from the service", response=_Response(status))


class TestKeyVaultErrors:
    @pytest.mark.parametrize(
        ("exc", "missing", "words"),
        [
            (_http(azure.ResourceNotFoundError, 404), True, "not found"),
            (_http(azure.ClientAuthenticationError, 401), False, "authentication"),
            (CredentialUnavailableError("no identity"), False, "authentication"),
            (_http(azure.HttpResponseError, 403), False, "Key Vault Secrets User"),
            (_http(azure.HttpResponseError, 429), False, "answered 429"),
            (_http(azure.HttpResponseError, 500), False, "answered 500"),
            (_http(azure.DecodeError, 200), False, "answered 200"),
            (azure.ServiceRequestError("refused"), False, "unreachable"),
            (azure.ServiceRequestTimeoutError("slow"), False, "unreachable"),
            (azure.ServiceResponseError("reset"), False, "unreachable"),
            (azure.ServiceResponseTimeoutError("slow"), False, "unreachable"),
            (ConnectionRefusedError(111, "refused"), False, "unreachable"),
            (TimeoutError(), False, "unreachable"),
            (azure.AzureError("other"), False, "could not be used"),
        ],
        ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
    )
    def test_every_exception_we_can_meet_is_mapped(
        self, exc: BaseException, missing: bool, words: str
    ) -> None:
        """Each azure-core exception becomes SecretsUnavailable naming the secret and the cause."""
        translated = translate_keyvault_error(exc, RELAYS)
        assert isinstance(translated, SecretsUnavailable)
        assert (translated.secret, translated.missing) == (RELAYS, missing)
        assert words in str(translated)

    def test_ours_pass_through(self) -> None:
        """An error that is already ours is returned unchanged."""
        ours = SecretsUnavailable(RELAYS, "x")
        assert translate_keyvault_error(ours, "other") is ours


class TestSettings:
    def test_key_vault(self) -> None:
        """An https vault URL selects Key Vault, refreshed every 300 s by default."""
        settings = CloudKeysSettings.from_env(
            {"WRITEBACK_KEYVAULT_URL": "https://kv-writeback.vault.azure.net/"}
        )
        assert settings == CloudKeysSettings("https://kv-writeback.vault.azure.net/", None, 300)

    def test_local_directory_and_refresh(self) -> None:
        """A secrets directory selects local files; the refresh interval is configurable."""
        settings = CloudKeysSettings.from_env(
            {"WRITEBACK_SECRETS_DIR": "secrets", "WRITEBACK_KEYS_REFRESH_SECONDS": "60"}
        )
        assert (settings.vault_url, settings.secrets_dir, settings.refresh_seconds) == (
            None,
            Path("secrets"),
            60,
        )

    @pytest.mark.parametrize(
        ("environ", "setting"),
        [
            ({}, "WRITEBACK_KEYVAULT_URL"),
            (
                {
                    "WRITEBACK_KEYVAULT_URL": "https://a.vault.azure.net",
                    "WRITEBACK_SECRETS_DIR": "s",
                },
                "WRITEBACK_KEYVAULT_URL",
            ),
            ({"WRITEBACK_KEYVAULT_URL": "http://a.vault.azure.net"}, "WRITEBACK_KEYVAULT_URL"),
            ({"WRITEBACK_KEYVAULT_URL": "a.vault.azure.net"}, "WRITEBACK_KEYVAULT_URL"),
            (
                {"WRITEBACK_KEYVAULT_URL": "https://a.vault.azure.net/secrets/x"},
                "WRITEBACK_KEYVAULT_URL",
            ),
            ({"WRITEBACK_KEYVAULT_URL": "https://a.vault.azure.net?x=1"}, "WRITEBACK_KEYVAULT_URL"),
            (
                {"WRITEBACK_SECRETS_DIR": "s", "WRITEBACK_KEYS_REFRESH_SECONDS": "soon"},
                "WRITEBACK_KEYS_REFRESH_SECONDS",
            ),
            (
                {"WRITEBACK_SECRETS_DIR": "s", "WRITEBACK_KEYS_REFRESH_SECONDS": "0"},
                "WRITEBACK_KEYS_REFRESH_SECONDS",
            ),
            (
                {"WRITEBACK_SECRETS_DIR": "s", "WRITEBACK_KEYS_REFRESH_SECONDS": "nan"},
                "WRITEBACK_KEYS_REFRESH_SECONDS",
            ),
        ],
    )
    def test_bad_settings_are_named(self, environ: dict[str, str], setting: str) -> None:
        """Every invalid combination or value is refused naming the setting at fault."""
        with pytest.raises(ConfigurationError) as raised:
            CloudKeysSettings.from_env(environ)
        assert raised.value.setting == setting

    def test_unresolved_vault_url_reference(self) -> None:
        """A Key Vault reference App Service could not resolve is named, not used as a URL."""
        reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/url/)"
        with pytest.raises(ConfigurationError) as raised:
            CloudKeysSettings.from_env({"WRITEBACK_KEYVAULT_URL": reference})
        assert raised.value.setting == "WRITEBACK_KEYVAULT_URL"
        assert "unresolved Key Vault reference" in str(raised.value)

    def test_check_resolved_names_the_first_unresolved_setting(self) -> None:
        """Any app setting left as `@Microsoft.KeyVault(` is refused by name, value not echoed."""
        environ = {
            "Z_SETTING": "@Microsoft.KeyVault(VaultName=kv;SecretName=z)",
            "AUDIT_KEY": "  @microsoft.keyvault(VaultName=kv;SecretName=audit)",
            "PLAIN": "value",
        }
        with pytest.raises(ConfigurationError) as raised:
            check_resolved(environ)
        assert raised.value.setting == "AUDIT_KEY"
        assert "SecretName" not in str(raised.value)

    def test_check_resolved_accepts_resolved_settings(self) -> None:
        """Resolved settings (even ones mentioning Key Vault) pass."""
        check_resolved({"A": "https://kv.vault.azure.net", "B": "see @Microsoft.KeyVault(...)"})


@dataclass
class _Credential:
    closed: bool = False

    async def get_token(self, *scopes: str, **kwargs: object) -> object:
        raise AssertionError("nothing connects while building")

    async def close(self) -> None:
        self.closed = True


class TestBuildSecretSource:
    async def test_local_directory(self, tmp_path: Path) -> None:
        """A secrets directory gives a LocalSecrets and asks for no credential."""

        def no_credential() -> _Credential:
            raise AssertionError("no credential for local secrets")

        source = build_secret_source(CloudKeysSettings(secrets_dir=tmp_path), no_credential)
        assert isinstance(source, LocalSecrets)

    async def test_key_vault_owns_its_credential(self) -> None:
        """A vault URL gives a KeyVaultSecrets that closes the credential it was built with."""
        credential = _Credential()
        settings = CloudKeysSettings(vault_url="https://kv.vault.azure.net")
        source = build_secret_source(settings, lambda: credential)
        assert isinstance(source, KeyVaultSecrets)
        await source.close()
        assert credential.closed


class TestCloudKeys:
    async def test_signing_key(self, keys: CloudKeys) -> None:
        """The signing key is the cloud's private P-256 JWK, with its kid."""
        key = await keys.signing_key()
        assert (key.kid, key.is_private, key.get("crv")) == ("cloud-1", True, "P-256")

    async def test_relay_keys_are_the_relays_export(
        self, keys: CloudKeys, relay_export: KeyStore
    ) -> None:
        """A domain's relay keys are the public enc and sig keys its relays exported."""
        relay_keys = await keys.relay_keys(DOMAIN)
        exported = relay_export.keys()
        assert {(k.kid, k.get("use")) for k in relay_keys.keys} == {
            (info.kid, info.use) for info in exported
        }
        assert not any(key.is_private for key in relay_keys.keys)

    async def test_cached_within_the_interval(
        self, keys: CloudKeys, source: MemorySecrets, clock: Clock
    ) -> None:
        """Within the refresh interval the source is asked once per secret."""
        for _ in range(3):
            await keys.signing_key()
            await keys.relay_keys(DOMAIN)
            clock.now += 99
        assert sorted(source.fetches) == sorted([SIGNING_KEY_SECRET, RELAYS])

    async def test_rotation_picked_up_after_the_interval(
        self, keys: CloudKeys, source: MemorySecrets, clock: Clock
    ) -> None:
        """After the interval the next call refetches, so a rotated key is used without restart."""
        await keys.signing_key()
        source.values[SIGNING_KEY_SECRET] = cloud_jwk("cloud-2")
        clock.now += 299
        assert (await keys.signing_key()).kid == "cloud-1"
        clock.now += 1
        assert (await keys.signing_key()).kid == "cloud-2"

    async def test_concurrent_callers_share_one_fetch(
        self, keys: CloudKeys, source: MemorySecrets, clock: Clock
    ) -> None:
        """Callers arriving while a fetch is in flight wait for it instead of fetching again."""
        source.gate = asyncio.Event()
        waiting = [asyncio.create_task(keys.signing_key()) for _ in range(10)]
        await asyncio.sleep(0)
        source.gate.set()
        assert {key.kid for key in await asyncio.gather(*waiting)} == {"cloud-1"}
        clock.now += 300
        source.gate.clear()
        refreshing = [asyncio.create_task(keys.signing_key()) for _ in range(10)]
        await asyncio.sleep(0)
        source.gate.set()
        await asyncio.gather(*refreshing)
        assert source.fetches == [SIGNING_KEY_SECRET, SIGNING_KEY_SECRET]

    async def test_grace_after_a_failed_refresh(
        self,
        keys: CloudKeys,
        source: MemorySecrets,
        clock: Clock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A failed refresh serves the cached key, warns without the secret, retries later."""
        secret_text = source.values[SIGNING_KEY_SECRET]
        await keys.signing_key()
        source.failure = SecretsUnavailable(SIGNING_KEY_SECRET, "Key Vault is unreachable")
        clock.now += 300
        with caplog.at_level(logging.DEBUG):
            assert (await keys.signing_key()).kid == "cloud-1"
            clock.now += 29  # within the retry interval: no new attempt
            assert (await keys.signing_key()).kid == "cloud-1"
        assert source.fetches.count(SIGNING_KEY_SECRET) == 2
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.getMessage() == "keys_refresh_failed"
        assert warning.__dict__["secret"] == SIGNING_KEY_SECRET
        for value in [secret_text, *private_values(secret_text)]:
            assert value not in repr(warning.__dict__)
        clock.now += 1
        source.failure = None
        source.values[SIGNING_KEY_SECRET] = cloud_jwk("cloud-2")
        assert (await keys.signing_key()).kid == "cloud-2"

    async def test_grace_is_bounded(
        self, keys: CloudKeys, source: MemorySecrets, clock: Clock
    ) -> None:
        """Once the grace time is over, the source's error reaches the caller."""
        await keys.relay_keys(DOMAIN)
        source.failure = SecretsUnavailable(RELAYS, "Key Vault is unreachable")
        clock.now += 300 + 599
        await keys.relay_keys(DOMAIN)
        clock.now += 1
        with pytest.raises(SecretsUnavailable) as raised:
            await keys.relay_keys(DOMAIN)
        assert raised.value.secret == RELAYS

    async def test_first_fetch_failure_raises(self, keys: CloudKeys, source: MemorySecrets) -> None:
        """With nothing cached, a missing secret is an error naming it."""
        with pytest.raises(SecretsUnavailable) as raised:
            await keys.relay_keys("other.example.test")
        assert (raised.value.secret, raised.value.missing) == (
            "writeback-relays-other-example-test",
            True,
        )

    async def test_unusable_new_value_is_not_hidden_by_the_cache(
        self, keys: CloudKeys, source: MemorySecrets, clock: Clock
    ) -> None:
        """A refreshed value that does not parse raises at once: it is what is stored now."""
        await keys.signing_key()
        source.values[SIGNING_KEY_SECRET] = "not json"
        clock.now += 300
        with pytest.raises(ConfigurationError) as raised:
            await keys.signing_key()
        assert raised.value.setting == f"secret {SIGNING_KEY_SECRET}"

    async def test_close_closes_the_source(self, keys: CloudKeys, source: MemorySecrets) -> None:
        """Closing the keys closes their source."""
        await keys.close()
        assert source.closed


class TestParsing:
    @pytest.mark.parametrize(
        "text",
        [
            "not json",
            json.dumps(ECKey.generate_key("P-256", {"kid": "k"}).as_dict(private=False)),
            json.dumps(ECKey.generate_key("P-384", {"kid": "k"}, private=True).as_dict()),
            json.dumps(ECKey.generate_key("P-256", private=True).as_dict() | {"kid": ""}),
            json.dumps(
                ECKey.generate_key("P-256", {"kid": "k", "use": "enc"}, private=True).as_dict()
            ),
            json.dumps(
                ECKey.generate_key("P-256", {"kid": "k", "alg": "ES384"}, private=True).as_dict()
            ),
            json.dumps(RSAKey.generate_key(2048, {"kid": "k"}, private=True).as_dict()),
        ],
        ids=["not-json", "public", "p384", "no-kid", "enc", "es384", "rsa"],
    )
    def test_bad_signing_keys_refused(self, text: str) -> None:
        """Only a private P-256 ES256 signing JWK with a kid is a cloud signing key; the error
        names the secret and never quotes its text."""
        with pytest.raises(ConfigurationError) as raised:
            secrets.parse_signing_key(SIGNING_KEY_SECRET, text)
        assert raised.value.setting == f"secret {SIGNING_KEY_SECRET}"
        for value in private_values(text) if text.startswith("{") else [text]:
            assert value not in str(raised.value)

    def test_private_key_in_relay_jwks_refused(self, relay_export: KeyStore) -> None:
        """A relay JWKS holding a private key is refused, naming the secret, without the key."""
        private = {"keys": [relay_export.signing_key().as_dict(private=True)]}
        text = json.dumps(private)
        with pytest.raises(ConfigurationError) as raised:
            secrets.parse_relay_keys(RELAYS, text)
        assert raised.value.setting == f"secret {RELAYS}"
        assert "private key material" in str(raised.value)
        for value in private_values(text):
            assert value not in str(raised.value)

    @pytest.mark.parametrize("text", ["not json", "[]", '{"keys": []}'])
    def test_malformed_relay_jwks_refused(self, text: str) -> None:
        """A relay secret that is not a JWKS with keys is refused naming the secret."""
        with pytest.raises(ConfigurationError) as raised:
            secrets.parse_relay_keys(RELAYS, text)
        assert raised.value.setting == f"secret {RELAYS}"
