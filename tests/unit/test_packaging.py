"""The dependency lists stay pinned and in step with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


class TestRequirements:
    def test_every_requirement_is_pinned(self) -> None:
        """Azure installs exactly the versions we tested: every line is name==version."""
        assert requirements()
        for line in requirements():
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.\-]*", line), line

    def test_cloud_extra_matches_requirements(self) -> None:
        """The `cloud` extra and requirements.txt name the same pins."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert sorted(project["optional-dependencies"]["cloud"]) == sorted(requirements())

    def test_relay_extra_is_pinned(self) -> None:
        """The relay runs on customer hosts: its dependencies are pinned too."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        for requirement in project["optional-dependencies"]["relay"]:
            assert "==" in requirement, requirement
