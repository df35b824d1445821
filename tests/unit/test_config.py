"""relay.toml and the environment: one configuration, every problem named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from writeback.errors import ConfigurationError
from writeback.relay.config import Config
from writeback.relay.permissions import check_trusted_file

TOML = """
[relay]
id = "relay-dc1"
domain = "corp.example.com"
keys = "/var/lib/writeback/keys"
journal = "/var/lib/writeback/journal.sqlite3"
cloud_keys = "/etc/writeback/cloud-jwks.json"

[directory]
servers = ["ldaps://dc1.corp.example.com"]
ca_file = "{ca}"
bind_user = "svc-writeback@corp.example.com"
scopes = ["OU=Staff,DC=corp,DC=example,DC=com"]

[servicebus]
namespace = "corp-writeback.servicebus.windows.net"
websockets = true
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    path = tmp_path / "relay.toml"
    path.write_text(TOML.replace("{ca}", str(ca)))
    return path


class TestLoad:
    def test_a_complete_file(self, config_file: Path) -> None:
        """Every table is read and validated into its settings."""
        config = Config.load(config_file, environ={})
        assert (config.relay.id, config.relay.domain, config.relay.concurrency) == (
            "relay-dc1",
            "corp.example.com",
            4,
        )
        assert config.directory.servers[0].host == "dc1.corp.example.com"
        assert config.servicebus.websockets is True

    def test_environment_overrides_the_file(self, config_file: Path) -> None:
        """WRITEBACK_<TABLE>_<KEY> wins, read as TOML (numbers, lists) or as a plain string."""
        config = Config.load(
            config_file,
            environ={
                "WRITEBACK_RELAY_CONCURRENCY": "8",
                "WRITEBACK_RELAY_ID": "relay-dc2",
                "WRITEBACK_DIRECTORY_SERVERS": '["ldaps://dc2.corp.example.com", "ldaps://dc3.corp.example.com"]',
                "WRITEBACK_SERVICEBUS_WEBSOCKETS": "false",
            },
        )
        assert (config.relay.concurrency, config.relay.id) == (8, "relay-dc2")
        assert [s.host for s in config.directory.servers] == [
            "dc2.corp.example.com",
            "dc3.corp.example.com",
        ]
        assert config.servicebus.websockets is False

    def test_the_change_throttle_defaults_and_can_be_turned_off(self, config_file: Path) -> None:
        """5 wrong current passwords per 900 s by default; 0 attempts turns it off."""
        config = Config.load(config_file, environ={})
        assert (config.relay.change_attempts, config.relay.change_window) == (5, 900.0)
        config = Config.load(config_file, environ={"WRITEBACK_RELAY_CHANGE_ATTEMPTS": "0"})
        assert config.relay.change_attempts == 0

    @pytest.mark.parametrize(
        ("environ", "setting"),
        [
            ({"WRITEBACK_RELAY_CONCURRENCY": "0"}, "relay.concurrency"),
            ({"WRITEBACK_RELAY_DOMAIN": "CORP"}, "relay.domain"),
            ({"WRITEBACK_RELAY_ID": "relay dc1"}, "relay.id"),
            ({"WRITEBACK_RELAY_COLOUR": "blue"}, "relay.colour"),
            ({"WRITEBACK_RELAY_HEARTBEAT_INTERVAL": "-5"}, "relay.heartbeat_interval"),
            ({"WRITEBACK_RELAY_CHANGE_ATTEMPTS": "-1"}, "relay.change_attempts"),
            ({"WRITEBACK_RELAY_CHANGE_ATTEMPTS": "true"}, "relay.change_attempts"),
            ({"WRITEBACK_RELAY_CHANGE_WINDOW": "0"}, "relay.change_window"),
            ({"WRITEBACK_RELAY_CHANGE_WINDOW": "nan"}, "relay.change_window"),
            ({"WRITEBACK_RELAY_CHANGE_WINDOW": "inf"}, "relay.change_window"),
            ({"WRITEBACK_DIRECTORY_SERVERS": '["ldap://dc1"]'}, "directory.servers"),
        ],
    )
    def test_bad_settings_are_named(
        self, config_file: Path, environ: dict[str, str], setting: str
    ) -> None:
        """Whichever source a bad value comes from, start-up stops naming the setting."""
        with pytest.raises(ConfigurationError) as caught:
            Config.load(config_file, environ=environ)
        assert caught.value.setting == setting

    def test_unknown_table(self, config_file: Path) -> None:
        """A table the relay does not know is refused (a typo would otherwise be ignored)."""
        config_file.write_text(config_file.read_text() + "\n[servicebuss]\nx = 1\n")
        with pytest.raises(ConfigurationError, match="unknown table"):
            Config.load(config_file, environ={})

    def test_missing_relay_table(self, config_file: Path) -> None:
        """Without [relay] the first required setting is named."""
        config_file.write_text(config_file.read_text().replace("[relay]", "[ignored]"))
        with pytest.raises(ConfigurationError):
            Config.load(config_file, environ={})


class TestSample:
    def test_the_documented_sample_loads(self, tmp_path: Path) -> None:
        """relay.sample.toml is a valid configuration (only its CA path is machine-specific)."""
        ca = tmp_path / "ca.pem"
        ca.write_text("ca")
        sample = Path(__file__).resolve().parents[2] / "relay.sample.toml"
        config = Config.load(sample, environ={"WRITEBACK_DIRECTORY_CA_FILE": str(ca)})
        assert config.relay.domain == "corp.example.com"
        assert config.servicebus.websockets is True
        assert config.directory.allow_protected_reset is False


class TestTrustedFiles:
    def test_cloud_keys_writable_by_others_are_refused(self, tmp_path: Path) -> None:
        """The cloud's public keys decide which requests the relay accepts: a file group or
        others may write is refused, naming relay.cloud_keys; 0644 is fine."""
        path = tmp_path / "cloud-jwks.json"
        path.write_text('{"keys": []}')
        path.chmod(0o644)
        check_trusted_file(path, "relay.cloud_keys")
        for mode in (0o664, 0o646):
            path.chmod(mode)
            with pytest.raises(ConfigurationError) as caught:
                check_trusted_file(path, "relay.cloud_keys")
            assert caught.value.setting == "relay.cloud_keys"

    def test_links_foreign_owners_and_open_folders_are_refused(self, tmp_path: Path) -> None:
        """As sshd's StrictModes: a symbolic link, a file in a folder others may write, a file
        behind a folder link or in a folder another uid owns are each refused; root's or the
        relay's file in a sticky folder (like /tmp) is fine."""

        def trusted(path: Path) -> str | None:
            try:
                check_trusted_file(path, "relay.cloud_keys")
            except ConfigurationError as exc:
                return f"{exc.setting}: {exc.problem}"
            return None

        def jwks(path: Path) -> Path:
            path.write_text('{"keys": []}')
            path.chmod(0o644)
            return path

        real = jwks(tmp_path / "real.json")
        sticky = tmp_path / "sticky"
        sticky.mkdir(mode=0o1777)
        sticky.chmod(0o1777)
        assert trusted(jwks(sticky / "in-sticky.json")) is None
        (sticky / "link.json").symlink_to(real)
        assert "symbolic link" in (trusted(sticky / "link.json") or "")
        open_folder = tmp_path / "open"
        open_folder.mkdir()
        open_folder.chmod(0o777)
        problem = trusted(jwks(open_folder / "copy.json")) or ""
        assert "writable by group or others (mode 777)" in problem
        if os.getuid() == 0:  # only root can give files away
            os.chown(real, 4321, 4321)
            assert "owned by uid 4321" in (trusted(real) or "")
            os.chown(real, 0, 0)
            theirs = tmp_path / "theirs"
            theirs.mkdir()
            os.chown(theirs, 4321, 4321)
            assert "owned by uid 4321" in (trusted(jwks(theirs / "k.json")) or "")
            folder_link = sticky / "folder"
            folder_link.symlink_to(tmp_path)
            os.lchown(folder_link, 4321, 4321)
            assert "symbolic link owned by uid 4321" in (trusted(folder_link / "real.json") or "")
        assert trusted(real) is None
