"""`writeback-relay doctor` and the directory demo against the real DC."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import demo, seed, wire_demo
from devstack.stack import Stack, write_relay_config
from tests.testbed import TestBed
from writeback.relay import cli
from writeback.relay import doctor as doctor_module


def config_for(testbed: TestBed, tmp_path: Path, account: seed.Account, **extra: str) -> Path:
    """A relay.toml for `account` (via devstack's writer, then adjusted)."""
    path = write_relay_config(testbed.dc, testbed.domain, tmp_path)
    text = path.read_text().replace(testbed.domain.relay.upn, account.upn)
    for key, value in extra.items():
        text = text.replace(f"{key} = ", f"# {key} = ", 1) + f"{key} = {value}\n"
    path.write_text(text)
    (tmp_path / "relay-bind-password").write_text(account.password + "\n")
    return path


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["doctor", "--config", str(config)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class TestDoctor:
    def test_healthy_relay_account(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The seeded relay account passes every check; missing policy hints is only a warning."""
        code, report = doctor(config_for(testbed, tmp_path, testbed.domain.relay), capsys)
        assert code == 0, report
        assert "[ok  ] pdc emulator: dc1.corp.example.test" in report
        assert "[warn] policy hints: not advertised" in report
        assert "Unexpire Password" in report
        assert "PSO(s) readable" in report
        assert "FAIL" not in report

    def test_the_change_throttle_is_checked_against_the_lockout_threshold(
        self, testbed: TestBed
    ) -> None:
        """The test domain locks out at 5: 5 allowed wrong current passwords is a warning that
        names the value to set, 4 is fine, and 0 (off) is a warning."""
        directory = testbed.directory()
        try:
            settings, password = directory.settings, testbed.domain.relay.password

            def throttle(attempts: int) -> doctor_module.Check:
                checks = doctor_module.diagnose(settings, password, change_attempts=attempts)
                (check,) = [c for c in checks if c.name == "change throttle"]
                return check

            at_threshold, below, off = throttle(5), throttle(4), throttle(0)
        finally:
            directory.close()
        assert at_threshold.level is doctor_module.Level.WARN
        assert "set it to 4 or less" in at_threshold.summary
        assert below.level is doctor_module.Level.OK
        assert "lockout threshold 5" in below.summary
        assert off.level is doctor_module.Level.WARN
        assert [c.name for c in doctor_module.diagnose(settings, password)].count(
            "change throttle"
        ) == 0

    def test_names_each_missing_right(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An account with Reset Password only is told it lacks lockoutTime and pwdLastSet."""
        code, report = doctor(config_for(testbed, tmp_path, testbed.domain.reset_only), capsys)
        assert code == 1
        assert "[FAIL] right Write lockoutTime" in report
        assert "[FAIL] right Write pwdLastSet" in report
        assert "right Reset Password" not in report

    def test_account_without_rights(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An undelegated account fails on Reset Password and is warned about unreadable PSOs."""
        code, report = doctor(config_for(testbed, tmp_path, testbed.domain.no_rights), capsys)
        assert code == 1
        assert "[FAIL] right Reset Password" in report
        assert "resets fail with directory.access_denied" in report
        assert "[warn] password settings objects: cannot read PSOs" in report

    def test_unreachable_and_untrusted_dcs(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A dead DC and a DC with an unnamed address are reported, and the exit code is 1."""
        config = config_for(
            testbed,
            tmp_path,
            testbed.domain.relay,
            servers='["ldaps://localhost:1", "ldaps://127.0.0.1:636"]',
        )
        code, report = doctor(config, capsys)
        assert code == 1
        assert "[FAIL] connect ldaps://localhost:1" in report
        assert "[FAIL] connect ldaps://127.0.0.1:636" in report
        assert "certificate" in report

    def test_one_dead_dc_among_working_ones_is_a_warning(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With a working DC, an unreachable one only degrades failover."""
        config = config_for(
            testbed,
            tmp_path,
            testbed.domain.relay,
            servers=f'["ldaps://localhost:1", "{testbed.dc.ldaps_url}"]',
        )
        code, report = doctor(config, capsys)
        assert code == 0, report
        assert "[warn] connect ldaps://localhost:1" in report

    def test_missing_scope_ou(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A configured OU that does not exist is a failure naming the setting."""
        config = config_for(
            testbed,
            tmp_path,
            testbed.domain.relay,
            scopes=f'["OU=Nowhere,{testbed.domain.base_dn}"]',
        )
        code, report = doctor(config, capsys)
        assert code == 1
        assert "not found (check directory.scopes)" in report


class TestCliErrors:
    def test_missing_config_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing file is one line naming --config, exit 2, no traceback."""
        code, output = doctor(tmp_path / "absent.toml", capsys)
        assert code == 2
        assert "configuration error: --config" in output
        assert "Traceback" not in output

    def test_bad_setting_is_named(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A plain ldap:// server is refused, naming directory.servers."""
        config = config_for(testbed, tmp_path, testbed.domain.relay, servers='["ldap://localhost"]')
        code, output = doctor(config, capsys)
        assert code == 2
        assert "directory.servers" in output
        assert "plain LDAP" in output

    def test_world_readable_password_file(
        self, testbed: TestBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bind password file readable by others stops the relay and is not printed."""
        config = config_for(testbed, tmp_path, testbed.domain.relay)
        (tmp_path / "relay-bind-password").chmod(0o644)
        code, output = doctor(config, capsys)
        assert code == 2
        assert "directory.bind_password_file" in output
        assert testbed.domain.relay.password not in output


class TestDemo:
    def test_directory_demo_meets_every_expectation(self, testbed: TestBed, tmp_path: Path) -> None:
        """The README's main job (directory demo) gets the expected reason on every row."""
        lines: list[str] = []
        stack = Stack(
            testbed.dc, testbed.domain, write_relay_config(testbed.dc, testbed.domain, tmp_path)
        )
        assert demo.run(stack, lines.append), "\n".join(lines)
        assert any("policy.min_age" in line for line in lines)
        assert not any("expected" in line for line in lines)

    def test_wire_demo_meets_every_expectation(self, testbed: TestBed, tmp_path: Path) -> None:
        """The main job's second part (relay over the local broker) gets every expected answer."""
        lines: list[str] = []
        stack = Stack(
            testbed.dc, testbed.domain, write_relay_config(testbed.dc, testbed.domain, tmp_path)
        )
        assert wire_demo.run(stack, lines.append, tmp_path / "wire"), "\n".join(lines)
        assert any("dead-lettered by the relay" in line for line in lines)
        assert sum("applied" in line for line in lines) >= 2
