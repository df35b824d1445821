"""docs/security.md names, for each of its promises, the tests that show it: every test named
there exists, so the page cannot point at a test that was renamed or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "security.md"
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:::(\w+))?`")


def defined(path: Path) -> set[str]:
    """`Class::test` and `test` names defined at the top of a test module."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
    return names


class TestSecurityPage:
    def test_every_named_test_exists(self) -> None:
        """Each `path::Class::test` in the promise table is a test of that module."""
        section = PAGE.read_text(encoding="utf-8").split("## Where each promise is tested", 1)[1]
        named = NODE.findall(section)
        assert len(named) >= 20, "the promise table names its tests"
        missing = [
            f"{path}::{first}" + (f"::{second}" if second else "")
            for path, first, second in named
            if not (ROOT / path).exists()
            or (f"{first}::{second}" if second else first) not in defined(ROOT / path)
        ]
        assert missing == []

    def test_the_check_finds_a_missing_test(self, tmp_path: Path) -> None:
        """A name that no module defines is reported (the check above can fail)."""
        module = tmp_path / "test_x.py"
        module.write_text("class TestA:\n    def test_b(self):\n        pass\n")
        assert defined(module) == {"TestA::test_b"}
        assert "TestA::test_c" not in defined(module)
