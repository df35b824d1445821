"""The relay's key store: layout and permissions, rotation with overlap, JOSE use, and the CLI.

The keys open every password the relay will set, so loading must refuse a key directory that
others can reach, and no repr, table, export or error message may carry private key material.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from joserfc import jwe, jws
from joserfc.jwk import ECKey, KeySet, KeySetSerialization, RSAKey, thumbprint

from writeback.errors import ConfigurationError, KeyStoreError
from writeback.relay import cli
from writeback.relay.keys import MANIFEST, KeyInfo, KeyStatus, KeyStore, render
from writeback.sealing import CONTENT_ENCRYPTION, EC_CURVE, KEY_WRAPPING, RSA_BITS, SIGNING

RELAY = "relay-east_1"
KID = re.compile(r"relay-east_1\.(enc|sig)\.[A-Za-z0-9_-]{16}")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
PASSWORD = "Correct-Horse-Battery-42"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised key directory per module, copied for each test: RSA generation is slow."""
    directory = tmp_path_factory.mktemp("template") / "keys"
    KeyStore.init(directory, RELAY)
    return directory


@pytest.fixture
def directory(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "keys"
    shutil.copytree(template, copy)  # keeps the 0700 / 0600 modes
    return copy


@pytest.fixture
def store(directory: Path) -> KeyStore:
    return KeyStore(directory)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def kids(store: KeyStore) -> list[str]:
    """The kids of `store`, oldest first."""
    infos = store.keys()
    return [info.kid for info in infos]


def by_status(store: KeyStore, status: KeyStatus) -> dict[str, str]:
    """The kids of `store` with `status`, by use."""
    infos = store.keys()
    return {info.use: info.kid for info in infos if info.status is status}


def exported(store: KeyStore) -> KeySet:
    return KeySet.import_key_set(cast(KeySetSerialization, store.public_jwks()))


def refusal(action: Callable[[], object]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        action()
    return caught.value


def private_values(directory: Path) -> set[str]:
    """Every private parameter value in the key files of `directory`."""
    values: set[str] = set()
    for path in directory.glob("*.jwk"):
        jwk = json.loads(path.read_text())
        values.update(str(jwk[name]) for name in PRIVATE_MEMBERS if name in jwk)
    return values


class TestInit:
    def test_layout_and_permissions(self, tmp_path: Path) -> None:
        """init creates a 0700 directory holding 0600 files: one JWK per key and the manifest."""
        directory = tmp_path / "relay" / "keys"
        store = KeyStore.init(directory, RELAY)
        assert mode(directory) == 0o700
        names = sorted(path.name for path in directory.iterdir())
        assert names == sorted([MANIFEST, *(f"{kid}.jwk" for kid in kids(store))])
        assert all(mode(directory / name) == 0o600 for name in names)

    def test_one_active_pair(self, store: KeyStore) -> None:
        """A new relay has one active RSA-OAEP-256 enc key and one active ES256 sig key."""
        keys = store.keys()
        assert [(k.use, k.algorithm, k.status) for k in keys] == [
            ("enc", KEY_WRAPPING, KeyStatus.ACTIVE),
            ("sig", SIGNING, KeyStatus.ACTIVE),
        ]
        assert all(KID.fullmatch(k.kid) and k.kid.split(".")[1] == k.use for k in keys)
        assert store.relay_id == RELAY

    def test_key_material(self, store: KeyStore, directory: Path) -> None:
        """The enc key is RSA of RSA_BITS, the sig key EC on EC_CURVE; both carry kid, use, alg."""
        enc = store.decryption_keys().keys[0]
        assert isinstance(enc, RSAKey)
        assert enc.raw_value.key_size == RSA_BITS
        sig = store.signing_key()
        assert sig.get("crv") == EC_CURVE
        for key in (enc, sig):
            assert key.is_private
            on_disk = json.loads((directory / f"{key.kid}.jwk").read_text())
            assert {on_disk["kid"], on_disk["use"], on_disk["alg"]} == {
                key.kid,
                key["use"],
                key.alg,
            }

    def test_kid_ends_in_thumbprint(self, store: KeyStore) -> None:
        """Each kid is relay.use. followed by the first 16 characters of its RFC 7638 thumbprint."""
        for jwk in exported(store):
            required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk.key_type]
            digest = thumbprint({name: jwk[name] for name in required})
            assert jwk.kid == f"{RELAY}.{jwk['use']}.{digest[:16]}"

    def test_created_is_utc_now(self, tmp_path: Path) -> None:
        """Creation times are timezone-aware UTC, taken when the pair was generated."""
        before = datetime.now(UTC) - timedelta(seconds=1)
        infos = KeyStore.init(tmp_path / "keys", RELAY).keys()
        for info in infos:
            assert info.created.tzinfo is UTC
            assert before <= info.created <= datetime.now(UTC)

    def test_constructor_does_not_touch_the_disk(self, tmp_path: Path) -> None:
        """Constructing a KeyStore neither creates nor reads its directory."""
        KeyStore(tmp_path / "absent")
        assert not (tmp_path / "absent").exists()

    def test_second_init_refused(self, directory: Path) -> None:
        """init refuses a directory that already holds a keyring, naming keys.directory."""
        error = refusal(lambda: KeyStore.init(directory, RELAY))
        assert error.setting == "keys.directory"
        assert "already holds a keyring" in str(error)

    def test_open_existing_directory_refused(self, tmp_path: Path) -> None:
        """init refuses an existing directory that others can read, and leaves its mode alone."""
        directory = tmp_path / "keys"
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        error = refusal(lambda: KeyStore.init(directory, RELAY))
        assert (error.setting, mode(directory)) == ("keys.directory", 0o755)
        assert list(directory.iterdir()) == []

    @pytest.mark.parametrize("relay_id", ["", "x" * 65, "bad id", "dc.east", "dc/east", "né"])
    def test_bad_relay_id_refused(self, tmp_path: Path, relay_id: str) -> None:
        """A relay id outside 1-64 of [A-Za-z0-9_-] is refused as relay.id before any file is
        written."""
        error = refusal(lambda: KeyStore.init(tmp_path / "keys", relay_id))
        assert error.setting == "relay.id"
        assert not (tmp_path / "keys").exists()


class TestLoad:
    def test_reopens_what_init_wrote(self, template: Path, store: KeyStore) -> None:
        """A fresh KeyStore over the directory sees the same relay and keys init created."""
        assert store.relay_id == RELAY
        assert kids(store) == kids(KeyStore(template))

    @pytest.mark.parametrize(("bits", "words"), [(0o644, "readable by others"),
                                                 (0o640, "readable by its group"),
                                                 (0o602, "accessible by others")])  # fmt: skip
    def test_key_file_open_to_others_refused(
        self, store: KeyStore, directory: Path, bits: int, words: str
    ) -> None:
        """A key file with any group or other bit is refused, named, and not chmod-ed silently."""
        key_file = next(directory.glob("*.enc.*.jwk"))
        key_file.chmod(bits)
        error = refusal(store.open)
        assert error.setting == "keys.directory"
        assert str(error) == f"keys.directory: {key_file} is {words} (mode {bits:o}); chmod 600 it"
        assert mode(key_file) == bits

    def test_manifest_open_to_others_refused(self, store: KeyStore, directory: Path) -> None:
        """keyring.json readable by others is refused like a key file."""
        (directory / MANIFEST).chmod(0o644)
        assert "keyring.json is readable by others (mode 644)" in str(refusal(store.open))

    def test_directory_open_to_others_refused(self, store: KeyStore, directory: Path) -> None:
        """A 0755 key directory is refused, named, and left as it was."""
        directory.chmod(0o755)
        error = refusal(store.keys)
        assert (
            str(error)
            == f"keys.directory: {directory} is readable by others (mode 755); chmod 700 it"
        )
        assert mode(directory) == 0o755

    def test_foreign_owner_refused(self, store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
        """Files owned by another uid than the relay's are refused."""
        owner = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: owner + 1)
        assert f"is owned by uid {owner}" in str(refusal(store.open))

    def test_symlinked_key_file_refused(self, store: KeyStore, directory: Path) -> None:
        """A key file that is a symbolic link is refused: the keys must live in the directory."""
        key_file = next(directory.glob("*.sig.*.jwk"))
        target = directory.parent / "elsewhere.jwk"
        key_file.rename(target)
        key_file.symlink_to(target)
        assert "is not a regular file" in str(refusal(store.open))

    def test_missing_directory_refused(self, tmp_path: Path) -> None:
        """A key directory that does not exist is a configuration error naming keys.directory."""
        assert refusal(KeyStore(tmp_path / "absent").open).setting == "keys.directory"

    def test_directory_without_keyring_refused(self, tmp_path: Path) -> None:
        """An empty private directory is refused with a hint to run keys init."""
        (tmp_path / "keys").mkdir(mode=0o700)
        assert "keys init" in str(refusal(KeyStore(tmp_path / "keys").open))

    def test_missing_key_file_refused(self, store: KeyStore, directory: Path) -> None:
        """A key listed in the manifest without its file is refused."""
        next(directory.glob("*.enc.*.jwk")).unlink()
        assert "is listed in keyring.json but missing" in str(refusal(store.open))

    def test_swapped_key_refused(self, store: KeyStore, directory: Path) -> None:
        """A key file holding another key than its kid says is refused."""
        key_file = next(directory.glob("*.sig.*.jwk"))
        other = ECKey.generate_key(EC_CURVE, {"use": "sig", "alg": SIGNING, "kid": "x"})
        key_file.write_text(json.dumps(other.as_dict(private=True)))
        assert "does not hold the private sig key" in str(refusal(store.open))

    def test_corrupt_key_file_refused_without_its_text(
        self, store: KeyStore, directory: Path
    ) -> None:
        """An unreadable key file is refused with no chained parser error that holds its text."""
        key_file = next(directory.glob("*.enc.*.jwk"))
        key_file.write_text(key_file.read_text()[:-40])
        error = refusal(store.open)
        assert "is not a valid private JWK" in str(error)
        assert error.__cause__ is None
        assert error.__suppress_context__

    def test_inconsistent_manifest_refused(self, store: KeyStore, directory: Path) -> None:
        """A manifest without exactly one active enc and sig key is refused."""
        manifest = json.loads((directory / MANIFEST).read_text())
        manifest["keys"][1]["status"] = "retired"
        (directory / MANIFEST).write_text(json.dumps(manifest))
        assert "exactly one active" in str(refusal(store.open))


class TestRotation:
    def test_rotate_adds_a_published_pending_pair(self, store: KeyStore) -> None:
        """rotate adds a pending pair that is exported with the active one but does not sign."""
        active = by_status(store, KeyStatus.ACTIVE)
        keys = store.rotate()
        pending = by_status(store, KeyStatus.PENDING)
        assert len(keys) == 4
        assert set(pending) == {"enc", "sig"}
        assert [k.kid for k in exported(store)] == [*active.values(), *pending.values()]
        assert store.signing_key().kid == active["sig"]
        assert pending["enc"] in {k.kid for k in store.decryption_keys()}

    def test_rotate_twice_refused(self, store: KeyStore) -> None:
        """A second rotate before activate is refused and changes nothing."""
        keys = store.rotate()
        with pytest.raises(KeyStoreError, match="a pending pair already exists"):
            store.rotate()
        assert store.keys() == keys == KeyStore(store._directory).keys()

    def test_activate_retires_the_old_pair(self, store: KeyStore) -> None:
        """activate makes the pending pair active and the active pair retired; retired keys are not
        exported but still open requests."""
        old = by_status(store, KeyStatus.ACTIVE)
        store.rotate()
        new = by_status(store, KeyStatus.PENDING)
        store.activate()
        assert by_status(store, KeyStatus.ACTIVE) == new
        assert by_status(store, KeyStatus.RETIRED) == old
        assert not by_status(store, KeyStatus.PENDING)
        assert [k.kid for k in exported(store)] == list(new.values())
        assert {k.kid for k in store.decryption_keys()} == {old["enc"], new["enc"]}
        assert store.signing_key().kid == new["sig"]

    def test_activate_without_pending_refused(self, store: KeyStore) -> None:
        """activate without a pending pair is refused."""
        with pytest.raises(KeyStoreError, match="no pending pair"):
            store.activate()

    def test_new_files_are_private(self, store: KeyStore, directory: Path) -> None:
        """Files written by rotate and activate are 0600, and no temporary file is left behind."""
        store.rotate()
        store.activate()
        files = list(directory.iterdir())
        assert len(files) == 5
        assert all(mode(path) == 0o600 for path in files)

    def test_remove_retired_key(self, store: KeyStore, directory: Path) -> None:
        """remove deletes a retired key from the keyring and from the disk."""
        old = by_status(store, KeyStatus.ACTIVE)
        store.rotate()
        store.activate()
        store.remove(old["enc"])
        assert old["enc"] not in kids(KeyStore(directory))
        assert not (directory / f"{old['enc']}.jwk").exists()
        assert old["enc"] not in {k.kid for k in store.decryption_keys()}

    @pytest.mark.parametrize("status", [KeyStatus.ACTIVE, KeyStatus.PENDING])
    def test_remove_live_key_refused(self, store: KeyStore, status: KeyStatus) -> None:
        """remove refuses an active or pending key and keeps it."""
        store.rotate()
        kid = by_status(store, status)["enc"]
        with pytest.raises(KeyStoreError, match=f"is {status}; only retired keys"):
            store.remove(kid)
        assert kid in kids(store)

    def test_remove_unknown_key_refused(self, store: KeyStore) -> None:
        """remove refuses a kid the keyring does not hold."""
        with pytest.raises(KeyStoreError, match="no key"):
            store.remove(f"{RELAY}.enc.AAAAAAAAAAAAAAAA")

    def test_changes_by_another_process_are_seen(self, directory: Path) -> None:
        """open() reloads, and changes always start from what is on disk, not from a stale copy."""
        running, admin = KeyStore(directory), KeyStore(directory)
        running.open()
        admin.rotate()
        with pytest.raises(KeyStoreError, match="a pending pair already exists"):
            running.rotate()
        admin.activate()
        running.open()
        assert running.signing_key().kid == admin.signing_key().kid


class TestJose:
    def test_export_has_no_private_members(self, store: KeyStore) -> None:
        """The exported JWKS holds public keys only, each with kid, use and alg."""
        store.rotate()
        jwks = store.public_jwks()
        assert set(jwks) == {"keys"}
        for jwk in cast(list[dict[str, str]], jwks["keys"]):
            assert not set(PRIVATE_MEMBERS) & set(jwk)
            assert {"kid", "use", "alg"} <= set(jwk)
        assert not any(key.is_private for key in exported(store))

    @pytest.mark.parametrize("status", [KeyStatus.ACTIVE, KeyStatus.PENDING, KeyStatus.RETIRED])
    def test_jwe_round_trip(self, store: KeyStore, status: KeyStatus) -> None:
        """A general JSON JWE sealed to an exported enc key opens with decryption_keys(), for
        active, pending and retired keys alike."""
        old = by_status(store, KeyStatus.ACTIVE)["enc"]
        store.rotate()
        kid = old if status is KeyStatus.RETIRED else by_status(store, status)["enc"]
        public = exported(store).get_by_kid(kid)
        if status is KeyStatus.RETIRED:
            store.activate()
        registry = jwe.JWERegistry(algorithms=[KEY_WRAPPING, CONTENT_ENCRYPTION])
        sealed = jwe.GeneralJSONEncryption({"enc": CONTENT_ENCRYPTION}, PASSWORD.encode())
        sealed.add_recipient({"alg": KEY_WRAPPING}, public)
        data = jwe.encrypt_json(sealed, None, registry=registry)
        assert (
            cast(dict[str, list[dict[str, dict[str, str]]]], data)["recipients"][0]["header"]["kid"]
            == kid
        )
        opened = jwe.decrypt_json(data, store.decryption_keys(), registry=registry)
        assert opened.plaintext == PASSWORD.encode()

    def test_jws_round_trip(self, store: KeyStore) -> None:
        """A compact JWS signed with signing_key() verifies with the exported sig key."""
        key = store.signing_key()
        token = jws.serialize_compact(
            {"alg": SIGNING, "kid": str(key.kid)}, b"outcome", key, algorithms=[SIGNING]
        )
        verified = jws.deserialize_compact(token, exported(store), algorithms=[SIGNING])
        assert verified.payload == b"outcome"
        assert verified.headers()["kid"] == key.kid


class TestSecrecy:
    def test_no_private_values_in_reprs_tables_or_errors(
        self, store: KeyStore, directory: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No private parameter value appears in a repr, the table, the export or any refusal."""
        store.rotate()
        store.activate()
        store.rotate()
        secrets = private_values(directory)
        assert len(secrets) == 6 * 3 + 3  # three RSA keys, three EC keys
        infos = store.keys()
        seen = [repr(store), str(store), repr(infos), render(infos), *map(str, infos)]
        seen.append(json.dumps(store.public_jwks()))
        active = by_status(store, KeyStatus.ACTIVE)["enc"]
        for action in (store.rotate, lambda: store.remove(active), lambda: store.remove("x")):
            with pytest.raises(KeyStoreError) as caught:
                action()
            seen.append(str(caught.value))
        key_file = directory / f"{active}.jwk"
        text = key_file.read_text()
        key_file.write_text(text.replace('"kid"', '"kid2"'))
        seen.append(str(refusal(store.open)))
        key_file.write_text(text[:-40])
        seen.append(str(refusal(store.open)))
        key_file.write_text(text)
        key_file.chmod(0o644)
        seen.append(str(refusal(store.open)))
        key_file.chmod(0o600)
        for command in ("list", "export"):
            assert cli.main(["keys", command, "--dir", str(directory)]) == 0
        seen.extend(capsys.readouterr())
        leaked = [value for value in secrets if any(value in text for text in seen)]
        assert leaked == []

    def test_key_info_carries_no_key(self) -> None:
        """KeyInfo has exactly the public facts about a key."""
        assert list(KeyInfo.__dataclass_fields__) == [
            "kid",
            "use",
            "status",
            "created",
            "algorithm",
        ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """`err` if it is exactly one line and no traceback, else a failed assertion."""
    assert err.count("\n") == 1
    assert "Traceback" not in err
    return err


class TestCli:
    def test_key_lifecycle(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """init, list, export, rotate, activate and remove work end to end and exit 0."""
        directory = str(tmp_path / "keys")
        code, out, _ = run(capsys, "keys", "init", "--dir", directory, "--relay-id", RELAY)
        assert (code, out.split()[:5]) == (0, ["KID", "USE", "ALG", "STATUS", "CREATED"])
        code, out, _ = run(capsys, "keys", "list", "--dir", directory)
        rows = [line.split() for line in out.splitlines()[1:]]
        assert (code, [row[1:4] for row in rows]) == (
            0,
            [["enc", KEY_WRAPPING, "active"], ["sig", SIGNING, "active"]],
        )
        old = [row[0] for row in rows]
        code, out, _ = run(capsys, "keys", "export", "--dir", directory)
        assert (code, [k["kid"] for k in json.loads(out)["keys"]]) == (0, old)
        code, out, _ = run(capsys, "keys", "rotate", "--dir", directory)
        assert (code, out.count("pending")) == (0, 2)
        code, out, _ = run(capsys, "keys", "export", "--dir", directory)
        assert (code, len(json.loads(out)["keys"])) == (0, 4)
        code, out, _ = run(capsys, "keys", "activate", "--dir", directory)
        assert (code, out.count("retired")) == (0, 2)
        code, out, _ = run(capsys, "keys", "remove", "--dir", directory, old[0])
        assert (code, out) == (0, f"removed {old[0]}\n")
        code, out, _ = run(capsys, "keys", "list", "--dir", directory)
        assert (old[0] in out, old[1] in out) == (False, True)

    def test_bad_relay_id_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad relay id exits 2 with one line on stderr naming relay.id."""
        code, out, err = run(
            capsys, "keys", "init", "--dir", str(tmp_path / "k"), "--relay-id", "bad id"
        )
        assert (code, out) == (2, "")
        assert one_line(err).startswith("writeback-relay: configuration error: relay.id: ")

    def test_readable_key_exits_2(
        self, directory: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A key file readable by others exits 2 with one line naming keys.directory."""
        next(directory.glob("*.jwk")).chmod(0o644)
        code, _, err = run(capsys, "keys", "list", "--dir", str(directory))
        assert code == 2
        assert "configuration error: keys.directory: " in one_line(err)

    def test_remove_active_exits_1(
        self, directory: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Removing an active key exits 1 with one line on stderr and no traceback."""
        kid = str(KeyStore(directory).signing_key().kid)
        code, _, err = run(capsys, "keys", "remove", "--dir", str(directory), kid)
        assert code == 1
        assert one_line(err) == (
            f"writeback-relay: refused: {kid} is active; only retired keys can be removed\n"
        )

    def test_rotate_twice_exits_1(
        self, directory: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A second rotate exits 1 with one line on stderr."""
        assert run(capsys, "keys", "rotate", "--dir", str(directory))[0] == 0
        code, _, err = run(capsys, "keys", "rotate", "--dir", str(directory))
        assert code == 1
        assert "pending pair already exists" in one_line(err)

    def test_doctor_still_there(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The doctor command is unchanged: a missing relay.toml exits 2 naming --config."""
        code, _, err = run(capsys, "doctor", "--config", str(tmp_path / "relay.toml"))
        assert code == 2
        assert "configuration error: --config: " in one_line(err)
