"""Who may read the relay's secrets: the POSIX mode rule, the Windows DACL rule, and the packaging
that runs the relay as a Windows service.

The Windows decision is a pure function of (SID, access mask, ACE type, flags) entries, so it is
tested here with real well-known SIDs; only the pywin32 reader and writer need Windows. The key
store, the journal and the bind password file are also driven through the Windows branch, with a
stand-in reader, to show that there the DACL and not the mode bits decides.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path, PureWindowsPath

import pytest

from writeback.errors import ConfigurationError
from writeback.relay import permissions
from writeback.relay.config import RelaySettings
from writeback.relay.journal import Journal
from writeback.relay.keys import MANIFEST, KeyStore
from writeback.relay.permissions import (
    ACCESS_ALLOWED_CALLBACK,
    ACCESS_ALLOWED_OBJECT,
    ACCESS_DENIED,
    ADMINISTRATORS,
    AUTHENTICATED_USERS,
    EVERYONE,
    FILE_ALL_ACCESS,
    FILE_READ_AND_EXECUTE,
    FILE_WRITE_DATA,
    GENERIC_ALL,
    GENERIC_READ,
    INHERIT_ONLY,
    INHERITED,
    SYSTEM,
    USERS,
    WRITE_DAC,
    Ace,
    allowed_sids,
    describe,
    exposure,
    icacls,
    private_sddl,
    service_sid,
)
from writeback.relay.settings import DirectorySettings

ROOT = Path(__file__).resolve().parents[2]
WINDOWS_DIR = ROOT / "packaging" / "windows"
RELAY_SID = service_sid()
ADMIN_USER = "S-1-5-21-1004336348-1177238915-682003330-500"  # a domain's Administrator (RID 500)
OTHER_USER = "S-1-5-21-1004336348-1177238915-682003330-1105"
OBJECT_INHERIT, CONTAINER_INHERIT = 0x01, 0x02
FILE_READ_ATTRIBUTES_AND_SYNCHRONIZE = 0x100080  # what "list folder / read attributes" leaves
PRIVATE = [
    Ace(SYSTEM, FILE_ALL_ACCESS),
    Ace(ADMINISTRATORS, FILE_ALL_ACCESS),
    Ace(RELAY_SID, FILE_ALL_ACCESS),
]
ALLOWED = allowed_sids(ADMIN_USER)


def path_of(name: str) -> Path:
    return Path(str(PureWindowsPath("C:/ProgramData/Writeback", name)))


class TestServiceSid:
    def test_matches_windows_for_a_known_service(self) -> None:
        """The SHA-1 rule gives the SIDs Windows itself uses for NT SERVICE accounts."""
        assert service_sid("TrustedInstaller") == (
            "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
        )
        assert service_sid("MSSQLSERVER") == (
            "S-1-5-80-3880718306-3832830129-1677859214-2598158968-1052248003"
        )

    def test_ignores_case(self) -> None:
        """Service names are case-insensitive, and so is their SID."""
        assert service_sid("writebackrelay") == service_sid("WritebackRelay") == RELAY_SID

    def test_allowed_are_system_administrators_the_service_and_the_caller(self) -> None:
        """Only SYSTEM, Administrators, NT SERVICE\\WritebackRelay and the current user."""
        assert allowed_sids(ADMIN_USER) == {SYSTEM, ADMINISTRATORS, RELAY_SID, ADMIN_USER}


class TestExposure:
    def test_private_acl_passes(self) -> None:
        """SYSTEM, Administrators and the relay's service with full control expose nothing."""
        assert exposure(PRIVATE, ALLOWED) == []

    def test_current_user_may_hold_rights(self) -> None:
        """The account the process runs as (the relay, or the admin at the prompt) is fine."""
        assert exposure([*PRIVATE, Ace(ADMIN_USER, FILE_ALL_ACCESS)], ALLOWED) == []

    @pytest.mark.parametrize(
        "ace",
        [
            Ace(USERS, FILE_READ_AND_EXECUTE, flags=INHERITED),
            Ace(EVERYONE, GENERIC_READ),
            Ace(AUTHENTICATED_USERS, GENERIC_ALL, flags=INHERITED),
            Ace(OTHER_USER, FILE_ALL_ACCESS),
            Ace(service_sid("Spooler"), FILE_ALL_ACCESS),
        ],
        ids=["users-inherited", "everyone", "authenticated-users", "domain-user", "other-service"],
    )
    def test_read_by_anyone_else_is_exposure(self, ace: Ace) -> None:
        """Read access for Users, Everyone, Authenticated Users, any user or other service."""
        assert exposure([*PRIVATE, ace], ALLOWED) == [ace]

    def test_write_and_permission_changes_count_too(self) -> None:
        """Writing a key file, or rewriting its DACL, is as bad as reading it."""
        writer = Ace(USERS, FILE_WRITE_DATA)
        controller = Ace(OTHER_USER, WRITE_DAC)
        assert exposure([*PRIVATE, writer, controller], ALLOWED) == [writer, controller]

    def test_attribute_reads_do_not_count(self) -> None:
        """Reading attributes and synchronising reveal nothing of the contents."""
        assert exposure([*PRIVATE, Ace(USERS, FILE_READ_ATTRIBUTES_AND_SYNCHRONIZE)], ALLOWED) == []

    def test_deny_aces_never_grant(self) -> None:
        """A deny ACE for Everyone is not an exposure."""
        assert exposure([Ace(EVERYONE, GENERIC_ALL, ACCESS_DENIED), *PRIVATE], ALLOWED) == []

    def test_a_deny_does_not_excuse_an_allow(self) -> None:
        """Users allowed to read is refused even when a deny ACE happens to cover it."""
        allow = Ace(USERS, FILE_READ_AND_EXECUTE, flags=INHERITED)
        acl = [Ace(USERS, GENERIC_READ, ACCESS_DENIED), *PRIVATE, allow]
        assert exposure(acl, ALLOWED) == [allow]

    def test_inherit_only_aces_count(self) -> None:
        """An inheritable grant reaches every file created later (SQLite's -wal, for one)."""
        creator = Ace("S-1-3-0", GENERIC_ALL, flags=OBJECT_INHERIT | INHERIT_ONLY | INHERITED)
        assert exposure([*PRIVATE, creator], ALLOWED) == [creator]

    @pytest.mark.parametrize("ace_type", [ACCESS_ALLOWED_OBJECT, ACCESS_ALLOWED_CALLBACK])
    def test_object_and_conditional_allows_count(self, ace_type: int) -> None:
        """Allow ACEs of other kinds grant too; a condition is not evaluated, so it is assumed."""
        ace = Ace(EVERYONE, GENERIC_READ, ace_type)
        assert exposure([*PRIVATE, ace], ALLOWED) == [ace]


class TestDescribe:
    def test_names_inherited_users_and_the_icacls_fix(self) -> None:
        """The line names the account, says it is inherited, and gives the exact command."""
        path = path_of(r"keys\keyring.json")
        line = describe(path, [Ace(USERS, FILE_READ_AND_EXECUTE, flags=INHERITED)], directory=False)
        assert line == (
            f"{path} is readable by BUILTIN\\Users (S-1-5-32-545, inherited); fix it with: "
            f'icacls "{path}" /inheritance:r /grant:r "*S-1-5-18:F" "*S-1-5-32-544:F" '
            f'"*{RELAY_SID}:F"'
        )

    def test_explicit_grants_are_removed_by_sid(self) -> None:
        """/inheritance:r cannot drop an explicit ACE, so the command removes it by SID."""
        exposed = [
            Ace(EVERYONE, GENERIC_READ),
            Ace(AUTHENTICATED_USERS, GENERIC_ALL, flags=INHERITED),
        ]
        line = describe(path_of("bind-password"), exposed, directory=False)
        assert "readable by Everyone (S-1-1-0) and NT AUTHORITY\\Authenticated Users" in line
        assert "/inheritance:r /remove:g *S-1-1-0 /grant:r" in line
        assert "/remove:g *S-1-1-0 *S-1-5-11" not in line

    def test_directories_get_inheritable_grants(self) -> None:
        """For a directory the grants carry (OI)(CI), so new files inherit them."""
        command = icacls(path_of("keys"), [Ace(USERS, FILE_READ_AND_EXECUTE)], directory=True)
        assert command.endswith(
            f'"*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "*{RELAY_SID}:(OI)(CI)F"'
        )

    def test_says_what_each_account_can_do(self) -> None:
        """Readers, writers and permission changers are told apart, each account named once."""
        exposed = [
            Ace(USERS, FILE_READ_AND_EXECUTE, flags=INHERITED),
            Ace(USERS, FILE_WRITE_DATA, flags=INHERITED),
            Ace(OTHER_USER, FILE_WRITE_DATA, name="CORP\\mallory"),
            Ace(service_sid("Spooler"), WRITE_DAC),
        ]
        line = describe(path_of("state"), exposed, directory=True)
        assert line.startswith(
            f"{path_of('state')} is readable by BUILTIN\\Users (S-1-5-32-545, inherited), and "
            f"writable by CORP\\mallory ({OTHER_USER}), and open to permission changes by "
            f"{service_sid('Spooler')}; fix it with: "
        )
        assert line.count("BUILTIN\\Users") == 1

    def test_unknown_accounts_show_their_sid(self) -> None:
        """An account the reader could not name (deleted, say) is shown by its SID."""
        line = describe(
            path_of("x"), [Ace(OTHER_USER, GENERIC_READ, flags=INHERITED)], directory=False
        )
        assert f"readable by {OTHER_USER} (inherited);" in line


class TestPrivateSddl:
    def test_file(self) -> None:
        """A protected DACL, full control for the given SIDs, nothing inherited from above."""
        assert private_sddl([SYSTEM, ADMINISTRATORS, RELAY_SID], directory=False) == (
            f"D:P(A;;FA;;;S-1-5-18)(A;;FA;;;S-1-5-32-544)(A;;FA;;;{RELAY_SID})"
        )

    def test_directory_inherits_down_and_lists_each_sid_once(self) -> None:
        """A directory's ACEs are inherited by what is created in it; duplicates are dropped."""
        assert private_sddl([SYSTEM, SYSTEM], directory=True) == "D:P(A;OICI;FA;;;S-1-5-18)"

    def test_what_it_grants_passes_the_check(self) -> None:
        """What make_private writes is exactly what the check accepts, whoever runs the relay."""
        aces = [Ace(sid, FILE_ALL_ACCESS) for sid in (SYSTEM, ADMINISTRATORS, RELAY_SID)]
        assert exposure(aces, allowed_sids(service_sid())) == []
        assert exposure(aces, allowed_sids("S-1-5-21-1-2-3-4444")) == []  # a gMSA, say


def status(mode: int, uid: int | None = None) -> os.stat_result:
    owner = os.getuid() if uid is None else uid
    return os.stat_result((mode, 0, 0, 1, owner, 0, 0, 0, 0, 0))


class TestPosixRule:
    @pytest.fixture(autouse=True)
    def posix(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(permissions, "WINDOWS", False)

    def test_owner_only_passes(self) -> None:
        """0600 files and 0700 directories are private."""
        assert permissions.problem(Path("k"), status(stat.S_IFREG | 0o600)) is None
        assert permissions.problem(Path("d"), status(stat.S_IFDIR | 0o700), directory=True) is None

    @pytest.mark.parametrize(
        ("bits", "words"),
        [
            (0o644, "readable by others"),
            (0o640, "readable by its group"),
            (0o602, "accessible by others"),
        ],
    )
    def test_precise_wording(self, bits: int, words: str) -> None:
        """The key store's wording says who and how (the message keys.py always gave)."""
        found = permissions.problem(Path("k"), status(stat.S_IFREG | bits), owner=True)
        assert found == f"k is {words} (mode {bits:o}); chmod 600 it"

    def test_plain_wording(self) -> None:
        """The journal's and bind password file's wording: any group bit is 'readable by others'."""
        found = permissions.problem(Path("j"), status(stat.S_IFREG | 0o640), precise=False)
        assert found == "j is readable by others (mode 640); chmod 600 it"

    def test_directory_fix_is_chmod_700(self) -> None:
        """A directory is told to become 0700."""
        found = permissions.problem(Path("d"), status(stat.S_IFDIR | 0o755), directory=True)
        assert found == "d is readable by others (mode 755); chmod 700 it"

    def test_owner_is_checked_only_when_asked(self) -> None:
        """The key store also refuses a file another uid owns; the others look at modes only."""
        foreign = status(stat.S_IFREG | 0o600, uid=os.getuid() + 1)
        assert permissions.problem(Path("k"), foreign) is None
        assert permissions.problem(Path("k"), foreign, owner=True) == (
            f"k is owned by uid {os.getuid() + 1}, not by the relay's uid {os.getuid()}"
        )


Reader = Callable[[Path], tuple[list[Ace], str]]


class TestWindowsBranch:
    """The callers on the Windows branch, with a stand-in for the pywin32 reader and writer."""

    @pytest.fixture
    def made_private(self, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, bool]]:
        calls: list[tuple[Path, bool]] = []

        def record(path: Path, *, directory: bool = False) -> None:
            calls.append((path, directory))

        monkeypatch.setattr(permissions, "WINDOWS", True)
        monkeypatch.setattr(permissions, "make_private", record)
        monkeypatch.setattr(permissions, "read_dacl", dacls({}))
        return calls

    def test_keys_are_made_private_and_modes_ignored(
        self, tmp_path: Path, made_private: list[tuple[Path, bool]]
    ) -> None:
        """keys init closes the directory and every file before writing; modes do not matter."""
        directory = tmp_path / "keys"
        store = KeyStore.init(directory, "relay-app01")
        assert made_private[0] == (directory, True)
        written = [path for path, is_dir in made_private[1:] if not is_dir]
        assert len(written) == 3  # two keys and the manifest
        assert all(p.parent == directory for p in written)
        (directory / MANIFEST).chmod(0o644)  # a POSIX mode means nothing on Windows
        store.open()

    def test_keys_refused_when_the_dacl_exposes_them(
        self, tmp_path: Path, made_private: list[tuple[Path, bool]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A keyring Users can read stops the relay with the account and the icacls fix."""
        directory = tmp_path / "keys"
        KeyStore.init(directory, "relay-app01")
        keyring = directory / MANIFEST
        users = Ace(USERS, FILE_READ_AND_EXECUTE, flags=INHERITED)
        monkeypatch.setattr(permissions, "read_dacl", dacls({keyring: users}))
        with pytest.raises(ConfigurationError) as caught:
            KeyStore(directory).open()
        assert str(caught.value) == (
            f"keys.directory: {keyring} is readable by BUILTIN\\Users (S-1-5-32-545, inherited); "
            f'fix it with: icacls "{keyring}" /inheritance:r /grant:r "*S-1-5-18:F" '
            f'"*S-1-5-32-544:F" "*{RELAY_SID}:F"'
        )

    def test_journal_is_created_private_once(
        self, tmp_path: Path, made_private: list[tuple[Path, bool]]
    ) -> None:
        """A new journal file is closed right after creation; an existing one is only checked."""
        path = tmp_path / "state" / "journal.sqlite3"
        Journal(path).close()
        Journal(path).close()
        assert made_private == [(path, False)]

    def test_journal_refused_when_everyone_can_read_it(
        self, tmp_path: Path, made_private: list[tuple[Path, bool]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An exposed journal names relay.journal and Everyone."""
        path = tmp_path / "journal.sqlite3"
        monkeypatch.setattr(permissions, "read_dacl", dacls({path: Ace(EVERYONE, GENERIC_READ)}))
        with pytest.raises(ConfigurationError) as caught:
            Journal(path)
        assert caught.value.setting == "relay.journal"
        assert "readable by Everyone (S-1-1-0); fix it with: icacls" in caught.value.problem

    def test_bind_password_file_follows_its_dacl(
        self, tmp_path: Path, made_private: list[tuple[Path, bool]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The bind password is read when the DACL is private, whatever the mode, else refused."""
        password_file = tmp_path / "bind-password"
        password_file.write_text("Pa55-word\r\n", encoding="utf-8")
        password_file.chmod(0o644)
        settings = directory_settings(tmp_path, password_file)
        assert settings.bind_password() == "Pa55-word"
        exposed = Ace(AUTHENTICATED_USERS, FILE_READ_AND_EXECUTE, flags=INHERITED)
        monkeypatch.setattr(permissions, "read_dacl", dacls({password_file: exposed}))
        with pytest.raises(ConfigurationError) as caught:
            settings.bind_password()
        assert caught.value.setting == "directory.bind_password_file"
        assert "Authenticated Users (S-1-5-11, inherited)" in caught.value.problem

    def test_unreadable_dacl_is_refused(
        self, tmp_path: Path, made_private: list[tuple[Path, bool]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the DACL cannot be read, the relay does not assume it is private."""

        def broken(path: Path) -> tuple[list[Ace], str]:
            raise OSError(5, "Access is denied")

        monkeypatch.setattr(permissions, "read_dacl", broken)
        found = permissions.problem(tmp_path, os.stat(tmp_path), directory=True)
        assert found == f"cannot check who can read {tmp_path}: Access is denied"

    def test_without_pywin32_the_relay_says_so(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On Windows without pywin32 (no relay extra) the check fails closed and names the fix."""
        monkeypatch.setattr(permissions, "WINDOWS", True)
        found = permissions.problem(tmp_path, os.stat(tmp_path), directory=True)
        assert found == (
            f"cannot check who can read {tmp_path}: pywin32 is missing (install writeback[relay])"
        )


def dacls(exposed: dict[Path, Ace]) -> Reader:
    """A stand-in reader: the private DACL, plus the given ACE for the given paths."""

    def read(path: Path) -> tuple[list[Ace], str]:
        extra = [exposed[path]] if path in exposed else []
        return [*PRIVATE, *extra], ADMIN_USER

    return read


def directory_settings(tmp_path: Path, password_file: Path) -> DirectorySettings:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not read here\n", encoding="utf-8")
    return DirectorySettings.from_mapping(
        {
            "servers": ["ldaps://dc1.corp.example.com"],
            "ca_file": str(ca_file),
            "bind_user": "svc-writeback@corp.example.com",
            "bind_password_file": str(password_file),
            "scopes": ["OU=Staff,DC=corp,DC=example,DC=com"],
        }
    )


# --- packaging/windows: the install script and the WinSW configuration agree ----------------------
SECONDS = {"sec": 1, "secs": 1, "min": 60, "mins": 60, "hour": 3600, "hours": 3600, "day": 86400}


def script_values() -> dict[str, str]:
    """The `$Name = 'value'` assignments of Install-WritebackRelay.ps1 (and param defaults)."""
    text = (WINDOWS_DIR / "Install-WritebackRelay.ps1").read_text(encoding="utf-8")
    pairs = re.findall(r"^\s*(?:\[\w+\]\s*)?\$(\w+) = '([^']*)'", text, flags=re.MULTILINE)
    numbers = re.findall(r"^\$(\w+) = (\d+)$", text, flags=re.MULTILINE)
    return dict(pairs) | dict(numbers)


def service_xml() -> ET.Element:
    return ET.parse(WINDOWS_DIR / "writeback-relay.xml").getroot()  # noqa: S314 -- our own file


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([a-z]+)", duration.strip())
    assert match, duration
    return int(match[1]) * SECONDS[match[2]]


class TestWindowsPackaging:
    def test_service_name_and_account_match_the_relay(self) -> None:
        """The WinSW id, the script's service and account, and the SID the relay allows agree."""
        values = script_values()
        assert service_xml().findtext("id") == values["ServiceName"] == permissions.SERVICE_NAME
        assert values["ServiceAccount"] == f"NT SERVICE\\{permissions.SERVICE_NAME}"
        assert (values["SidSystem"], values["SidAdministrators"]) == (SYSTEM, ADMINISTRATORS)

    def test_runs_the_installed_relay_with_its_config(self) -> None:
        """WinSW starts `writeback-relay run --config` from the venv the script creates."""
        values, xml = script_values(), service_xml()
        assert xml.findtext("executable") == values["VenvDir"] + r"\Scripts\writeback-relay.exe"
        arguments = [element.text for element in xml.findall("argument")]
        assert arguments == ["run", "--config", values["DataDir"] + r"\relay.toml"]

    def test_state_and_logs_live_in_the_private_data_directory(self) -> None:
        """Working directory and logs are the script's state and logs folders, under ProgramData."""
        values, xml = script_values(), service_xml()
        assert xml.findtext("workingdirectory") == values["StateDir"]
        assert xml.findtext("logpath") == values["LogDir"]
        for name in ("StateDir", "LogDir"):
            assert values[name].startswith(values["DataDir"] + "\\")
        log = xml.find("log")
        assert log is not None
        assert log.get("mode") == "roll-by-size"

    def test_wrapper_file_names_match(self) -> None:
        """WinSW reads the XML named like its executable: the script copies both as one name."""
        assert script_values()["WrapperName"] == "writeback-relay"
        assert (WINDOWS_DIR / "writeback-relay.xml").is_file()

    def test_stop_waits_longer_than_the_shutdown_grace(self) -> None:
        """WinSW kills only after the relay's default grace period for requests in flight."""
        grace = {f.name: f.default for f in dataclasses.fields(RelaySettings)}["shutdown_grace"]
        assert isinstance(grace, float)
        assert seconds(service_xml().findtext("stoptimeout") or "") > grace

    def test_restart_actions_match_sc_failure(self) -> None:
        """The XML's <onfailure> delays and reset equal the script's sc.exe failure actions."""
        values, xml = script_values(), service_xml()
        delays = [seconds(e.get("delay") or "") * 1000 for e in xml.findall("onfailure")]
        assert {e.get("action") for e in xml.findall("onfailure")} == {"restart"}
        assert values["FailureActions"] == "/".join(f"restart/{ms}" for ms in delays)
        assert seconds(xml.findtext("resetfailure") or "") == int(values["FailureReset"])

    def test_no_secret_and_no_account_in_the_xml(self) -> None:
        """The XML is readable by every local user: no password, connection string or account."""
        xml = service_xml()
        assert xml.find("serviceaccount") is None
        for env in xml.findall("env"):
            name = env.get("name") or ""
            assert not re.search("PASSWORD|CONNECTION_STRING|SECRET", name), name

    def test_script_closes_the_data_directory_and_sets_the_service_sid(self) -> None:
        """The script cuts inheritance, grants by SID and gives the service an unrestricted SID."""
        text = (WINDOWS_DIR / "Install-WritebackRelay.ps1").read_text(encoding="utf-8")
        assert "#Requires -RunAsAdministrator" in text
        assert "'/inheritance:r', '/grant:r'" in text
        assert "@('sidtype', $ServiceName, 'unrestricted')" in text
        assert (
            "@('failure', $ServiceName, 'reset=', \"$FailureReset\", 'actions=', $FailureActions)"
            in text
        )
        assert "service_sid('$ServiceName')" in text  # the relay computes its own SID

    def test_docs_describe_the_same_service(self) -> None:
        """docs/relay-windows.md exists, is linked from docs/relay.md and uses the same names."""
        page = (ROOT / "docs" / "relay-windows.md").read_text(encoding="utf-8")
        values = script_values()
        for expected in (values["ServiceName"], values["VenvDir"], values["DataDir"], RELAY_SID):
            assert expected in page, expected
        assert "(relay-windows.md)" in (ROOT / "docs" / "relay.md").read_text(encoding="utf-8")
