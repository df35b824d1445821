"""The relay's `[directory]` settings: what is accepted, and how a bad setting is named.

Every refusal must name the setting as relay.toml spells it (`directory.servers`), and the bind
password, whether from the environment or a file, must never appear in an error message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from writeback.errors import ConfigurationError
from writeback.relay.settings import PASSWORD_ENV, DirectorySettings, ServerAddress

SECRET = "Svc-Bind-Secret-9"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("any file will do\n")
    return path


@pytest.fixture
def table(ca_file: Path) -> dict[str, object]:
    return {
        "servers": ["ldaps://dc1.example.test", "ldaps://dc2.example.test:3269"],
        "ca_file": str(ca_file),
        "bind_user": "CN=svc-writeback,OU=Service,DC=example,DC=test",
        "scopes": ["OU=Staff,DC=example,DC=test"],
    }


def refusal(table: dict[str, object]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        DirectorySettings.from_mapping(table)
    return caught.value


class TestValidConfiguration:
    def test_minimal_table(self, table: dict[str, object], ca_file: Path) -> None:
        """The four required settings are enough; the rest take safe defaults."""
        settings = DirectorySettings.from_mapping(table)
        assert settings.servers == (
            ServerAddress("ldaps://dc1.example.test", "dc1.example.test", 636, True),
            ServerAddress("ldaps://dc2.example.test:3269", "dc2.example.test", 3269, True),
        )
        assert settings.ca_file == ca_file
        assert settings.scopes == ("OU=Staff,DC=example,DC=test",)
        assert settings.allow_protected_reset is False
        assert settings.denied_groups == ()
        assert (settings.connect_timeout, settings.operation_timeout) == (5.0, 10.0)

    def test_full_table(self, table: dict[str, object], tmp_path: Path) -> None:
        """Every optional setting is read, numbers as floats and paths as Paths."""
        settings = DirectorySettings.from_mapping(
            {
                **table,
                "servers": ["ldap://dc1.example.test"],
                "start_tls": True,
                "base_dn": "DC=example,DC=test",
                "denied_groups": ["CN=Tier0,OU=Groups,DC=example,DC=test"],
                "allow_protected_reset": True,
                "bind_password_file": str(tmp_path / "bind-password"),
                "connect_timeout": 3,
                "operation_timeout": 7.5,
            }
        )
        assert settings.servers == (
            ServerAddress("ldap://dc1.example.test", "dc1.example.test", 389, False),
        )
        assert settings.base_dn == "DC=example,DC=test"
        assert settings.denied_groups == ("CN=Tier0,OU=Groups,DC=example,DC=test",)
        assert settings.allow_protected_reset is True
        assert settings.bind_password_file == tmp_path / "bind-password"
        assert settings.connect_timeout == 3.0
        assert isinstance(settings.connect_timeout, float)
        assert settings.operation_timeout == 7.5


class TestServers:
    def test_plain_ldap_is_refused_without_start_tls(self, table: dict[str, object]) -> None:
        """ldap:// without start_tls is refused, naming directory.servers and the fix."""
        error = refusal({**table, "servers": ["ldap://dc1.example.test"]})
        assert error.setting == "directory.servers"
        assert str(error).startswith("directory.servers: ")
        assert "start_tls" in str(error)

    def test_plain_ldap_is_refused_with_start_tls_false(self, table: dict[str, object]) -> None:
        """An explicit start_tls = false is no different from leaving it out."""
        error = refusal({**table, "servers": ["ldap://dc1.example.test"], "start_tls": False})
        assert error.setting == "directory.servers"

    @pytest.mark.parametrize("url", ["https://dc1.example.test", "dc1.example.test", "ldaps://"])
    def test_other_urls_are_refused(self, table: dict[str, object], url: str) -> None:
        """Anything but an ldaps:// or ldap:// URL with a host is refused, naming the setting."""
        error = refusal({**table, "servers": [url]})
        assert error.setting == "directory.servers"
        assert repr(url) in str(error)

    def test_an_empty_list_is_refused(self, table: dict[str, object]) -> None:
        """At least one DC must be listed."""
        assert refusal({**table, "servers": []}).setting == "directory.servers"

    def test_a_section_name_other_than_directory_is_used(self, table: dict[str, object]) -> None:
        """The setting is named after the section it was read from."""
        with pytest.raises(ConfigurationError) as caught:
            DirectorySettings.from_mapping({**table, "servers": "ldaps://dc1"}, section="ad")
        assert caught.value.setting == "ad.servers"


class TestRefusedTables:
    def test_unknown_key_is_named(self, table: dict[str, object]) -> None:
        """A misspelt key is refused by name rather than silently ignored."""
        error = refusal({**table, "server": ["ldaps://dc1.example.test"]})
        assert error.setting == "directory.server"
        assert "unknown setting" in str(error)

    @pytest.mark.parametrize("key", ["scopes", "servers", "ca_file", "bind_user"])
    def test_missing_required_setting_is_named(self, table: dict[str, object], key: str) -> None:
        """Each required setting, when missing, is the one the error names."""
        del table[key]
        assert refusal(table).setting == f"directory.{key}"

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("scopes", []),
            ("scopes", "OU=Staff,DC=example,DC=test"),
            ("scopes", [""]),
            ("bind_user", ""),
            ("bind_user", "   "),
            ("ca_file", 7),
        ],
    )
    def test_empty_or_mistyped_required_setting_is_named(
        self, table: dict[str, object], key: str, value: object
    ) -> None:
        """An empty list, a bare string for a list, or a blank string is refused by name."""
        assert refusal({**table, key: value}).setting == f"directory.{key}"

    def test_ca_file_must_be_a_file(self, table: dict[str, object], tmp_path: Path) -> None:
        """A CA path that is not a readable file is refused, naming directory.ca_file."""
        error = refusal({**table, "ca_file": str(tmp_path)})
        assert error.setting == "directory.ca_file"
        assert str(tmp_path) in str(error)

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("start_tls", "yes"),
            ("start_tls", 1),
            ("allow_protected_reset", "true"),
            ("allow_protected_reset", 0),
        ],
    )
    def test_non_bool_flag_is_named(
        self, table: dict[str, object], key: str, value: object
    ) -> None:
        """Flags must be TOML booleans; a string or a number is refused by name."""
        error = refusal({**table, key: value})
        assert error.setting == f"directory.{key}"
        assert "true or false" in str(error)

    @pytest.mark.parametrize("key", ["connect_timeout", "operation_timeout"])
    @pytest.mark.parametrize("value", [0, -1, -0.5, "5", True, None])
    def test_non_positive_or_non_numeric_timeout_is_named(
        self, table: dict[str, object], key: str, value: object
    ) -> None:
        """Timeouts must be positive numbers of seconds; zero, negatives, text, bools are not."""
        error = refusal({**table, key: value})
        assert error.setting == f"directory.{key}"
        assert "positive number" in str(error)


class TestBindPassword:
    def test_from_the_environment(self, table: dict[str, object]) -> None:
        """Without a password file the password comes from WRITEBACK_DIRECTORY_BIND_PASSWORD."""
        settings = DirectorySettings.from_mapping(table)
        assert PASSWORD_ENV == "WRITEBACK_DIRECTORY_BIND_PASSWORD"
        assert settings.bind_password({PASSWORD_ENV: SECRET}) == SECRET

    def test_missing_everywhere_is_named(self, table: dict[str, object]) -> None:
        """No file and an empty variable is refused, naming the file setting and the variable."""
        settings = DirectorySettings.from_mapping(table)
        with pytest.raises(ConfigurationError) as caught:
            settings.bind_password({PASSWORD_ENV: ""})
        assert caught.value.setting == "directory.bind_password_file"
        assert PASSWORD_ENV in str(caught.value)

    def test_from_an_owner_only_file(self, table: dict[str, object], tmp_path: Path) -> None:
        """A 0600 file is read, its trailing newline stripped; the file wins over the variable."""
        path = tmp_path / "bind-password"
        path.write_text(SECRET + "\n", encoding="utf-8")
        path.chmod(0o600)
        settings = DirectorySettings.from_mapping({**table, "bind_password_file": str(path)})
        assert settings.bind_password({PASSWORD_ENV: "not-this-one"}) == SECRET

    def test_a_crlf_line_end_is_stripped(self, table: dict[str, object], tmp_path: Path) -> None:
        """A file written on Windows (CRLF) gives the same password."""
        path = tmp_path / "bind-password"
        path.write_bytes(SECRET.encode() + b"\r\n")
        path.chmod(0o600)
        settings = DirectorySettings.from_mapping({**table, "bind_password_file": str(path)})
        assert settings.bind_password({}) == SECRET

    def test_a_byte_order_mark_is_not_part_of_the_password(
        self, table: dict[str, object], tmp_path: Path
    ) -> None:
        """A file Windows PowerShell wrote with a UTF-8 byte-order mark gives the same password."""
        path = tmp_path / "bind-password"
        path.write_bytes(b"\xef\xbb\xbf" + SECRET.encode() + b"\r\n")
        path.chmod(0o600)
        settings = DirectorySettings.from_mapping({**table, "bind_password_file": str(path)})
        assert settings.bind_password({}) == SECRET

    def test_a_utf16_file_is_refused_by_name(
        self, table: dict[str, object], tmp_path: Path
    ) -> None:
        """A file in UTF-16 (PowerShell 5.1's `>`) is a configuration error naming the setting,
        not a traceback, and the message quotes nothing of the file."""
        path = tmp_path / "bind-password"
        path.write_bytes(b"\xff\xfe" + (SECRET + "\r\n").encode("utf-16-le"))
        path.chmod(0o600)
        settings = DirectorySettings.from_mapping({**table, "bind_password_file": str(path)})
        with pytest.raises(ConfigurationError) as caught:
            settings.bind_password({})
        assert caught.value.setting == "directory.bind_password_file"
        assert "UTF-16" in str(caught.value)
        assert caught.value.__cause__ is None
        assert SECRET not in str(caught.value)

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
    def test_a_file_others_can_read_is_refused(
        self, table: dict[str, object], tmp_path: Path, mode: int
    ) -> None:
        """A file readable by group or others is refused by name, without showing the password."""
        path = tmp_path / "bind-password"
        path.write_text(SECRET + "\n", encoding="utf-8")
        path.chmod(mode)
        settings = DirectorySettings.from_mapping({**table, "bind_password_file": str(path)})
        with pytest.raises(ConfigurationError) as caught:
            settings.bind_password({})
        assert caught.value.setting == "directory.bind_password_file"
        assert f"{mode:o}" in str(caught.value)
        assert SECRET not in str(caught.value)
        assert SECRET not in repr(caught.value)

    def test_a_missing_file_is_named(self, table: dict[str, object], tmp_path: Path) -> None:
        """A password file that does not exist is refused by name."""
        settings = DirectorySettings.from_mapping(
            {**table, "bind_password_file": str(tmp_path / "absent")}
        )
        with pytest.raises(ConfigurationError) as caught:
            settings.bind_password({PASSWORD_ENV: SECRET})
        assert caught.value.setting == "directory.bind_password_file"

    def test_an_empty_file_is_named(self, table: dict[str, object], tmp_path: Path) -> None:
        """A password file holding only a newline is refused, not read as an empty password."""
        path = tmp_path / "bind-password"
        path.write_text("\n", encoding="utf-8")
        path.chmod(0o600)
        settings = DirectorySettings.from_mapping({**table, "bind_password_file": str(path)})
        with pytest.raises(ConfigurationError) as caught:
            settings.bind_password({})
        assert caught.value.setting == "directory.bind_password_file"
        assert "empty" in str(caught.value)


class TestDistinguishedNames:
    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("scopes", ["Staff"]),
            ("scopes", ["OU=Staff,,DC=x"]),
            ("denied_groups", ["Tier 0"]),
            ("base_dn", "corp.example.com"),
            ("base_dn", 42),
        ],
    )
    def test_malformed_dns_are_named(self, tmp_path: Path, key: str, value: object) -> None:
        """A DN setting that is not a DN stops start-up, naming the setting."""
        ca = tmp_path / "ca.pem"
        ca.write_text("ca")
        table: dict[str, object] = {
            "servers": ["ldaps://dc1.corp.example.com"],
            "ca_file": str(ca),
            "bind_user": "svc@corp.example.com",
            "scopes": ["OU=Staff,DC=corp,DC=example,DC=com"],
        }
        table[key] = value
        with pytest.raises(ConfigurationError) as caught:
            DirectorySettings.from_mapping(table)
        assert caught.value.setting == f"directory.{key}"
