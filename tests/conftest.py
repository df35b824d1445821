"""Markers by directory: tests/unit -> unit, tests/integration -> integration, and so on."""

from __future__ import annotations

import pytest

SUITES = ("unit", "integration", "e2e", "infra", "live")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for suite in SUITES:
            if suite in item.path.parts:
                item.add_marker(getattr(pytest.mark, suite))
