"""The relay as AD teams install it: the project's wheel with the `relay` extra, in a clean
virtual environment, pulls only the relay's dependencies and runs `writeback-relay doctor`
against the real DC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.integration.test_doctor import config_for
from tests.testbed import TestBed
from writeback import __version__

ROOT = Path(__file__).resolve().parents[2]
# What only the cloud side, the local stack or the tests need: never on a relay host.
NOT_FOR_THE_RELAY = frozenset(
    {
        "azure-functions",
        "azure-data-tables",
        "azure-keyvault-secrets",
        "azure-monitor-opentelemetry",
        "python-qpid-proton",
        "hypothesis",
        "pytest",
    }
)


def _run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def relay_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtual environment with the built wheel and its `relay` extra installed."""
    work = tmp_path_factory.mktemp("wheel")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", work / "dist",
        ROOT,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("writeback-*.whl")
    environment = work / "venv"
    venv.create(environment, with_pip=True)
    installed = _run(
        environment / "bin" / "pip", "install", "--quiet", f"{wheel}[relay]",
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    return environment


class TestTheRelayWheel:
    def test_the_wheel_holds_the_package_only(self, relay_venv: Path) -> None:
        """The wheel ships the writeback package, never the local stack or the tests."""
        (wheel,) = (relay_venv.parent / "dist").glob("writeback-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            tops = {name.split("/", 1)[0] for name in archive.namelist()}
        assert "writeback" in tops
        assert not tops & {"devstack", "tests", "bench", "function_app.py"}

    def test_only_the_relays_dependencies_are_installed(self, relay_venv: Path) -> None:
        """`pip install writeback[relay]` brings ldap3, joserfc and the Service Bus SDK, and
        nothing only the cloud side, the local stack or the tests need."""
        listed = _run(relay_venv / "bin" / "pip", "list", "--format=json")
        names = {package["name"].lower() for package in json.loads(listed.stdout)}
        assert {"writeback", "ldap3", "joserfc", "azure-servicebus", "cryptography"} <= names
        assert not names & NOT_FOR_THE_RELAY

    def test_says_its_version(self, relay_venv: Path) -> None:
        """`writeback-relay --version` prints the version heartbeats and /health report."""
        answer = _run(relay_venv / "bin" / "writeback-relay", "--version")
        assert answer.returncode == 0
        assert answer.stdout.strip() == f"writeback-relay {__version__}"

    def test_doctor_passes_against_the_dc(
        self, relay_venv: Path, testbed: TestBed, tmp_path: Path
    ) -> None:
        """The installed relay's doctor checks TLS, bind, rights and policy on the real DC
        without any module the relay extra does not install."""
        config = config_for(testbed, tmp_path, testbed.domain.relay)
        report = _run(
            relay_venv / "bin" / "writeback-relay", "doctor", "--config", config, cwd=tmp_path
        )
        assert report.returncode == 0, report.stdout + report.stderr
        assert "[ok  ] pdc emulator" in report.stdout
        assert "FAIL" not in report.stdout
