"""The cloud signing key tool: a private key for Key Vault, its public JWKS for the relays."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from writeback import sealing
from writeback.cloud.keytool import main
from writeback.cloud.secrets import SIGNING_KEY_SECRET, parse_signing_key


class TestKeytool:
    def test_init_writes_a_private_key_and_its_public_jwks(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The private file is owner-only and parses as the cloud's key; the JWKS is public and
        verifies what the key signs; nothing private is printed."""
        assert main(["init", "--out", str(tmp_path), "--kid", "cloud.sig.test"]) == 0
        private = tmp_path / SIGNING_KEY_SECRET
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        key = parse_signing_key("test", private.read_text())
        jwks = json.loads((tmp_path / "cloud-jwks.json").read_text())
        keys = sealing.public_keyset(jwks, "jwks")  # refuses private members
        token = sealing.sign({"x": 1}, key, "test+jws")
        assert sealing.verify(token, keys, "test+jws")[0] == "cloud.sig.test"
        assert '"d"' not in capsys.readouterr().out

    def test_init_never_overwrites_a_key(self, tmp_path: Path) -> None:
        """A second init in the same directory exits 2 and leaves the first key alone."""
        assert main(["init", "--out", str(tmp_path)]) == 0
        before = (tmp_path / SIGNING_KEY_SECRET).read_text()
        assert main(["init", "--out", str(tmp_path)]) == 2
        assert (tmp_path / SIGNING_KEY_SECRET).read_text() == before

    def test_public_merges_for_a_rotation(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The new key's public half is added to the relays' JWKS, the old one kept."""
        old, new = tmp_path / "old", tmp_path / "new"
        main(["init", "--out", str(old), "--kid", "cloud.sig.old"])
        main(["init", "--out", str(new), "--kid", "cloud.sig.new"])
        capsys.readouterr()
        code = main(["public", "--key", str(new / SIGNING_KEY_SECRET), "--add",
                     str(old / "cloud-jwks.json")])  # fmt: skip
        assert code == 0
        merged = json.loads(capsys.readouterr().out)
        assert [k["kid"] for k in merged["keys"]] == ["cloud.sig.old", "cloud.sig.new"]

    def test_an_unusable_key_file_is_named(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A key file that is not a private ES256 JWK exits 2 with a message naming it."""
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        assert main(["public", "--key", str(bad)]) == 2
        assert "bad.json" in capsys.readouterr().err
