"""Markers by directory (tests/unit -> unit, tests/integration -> integration, and so on), and the
servers every suite may share (Azurite here, the Samba DC in tests.testbed), each started only
when a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.azurite import Azurite

SUITES = ("unit", "integration", "e2e", "infra", "live")
# The Samba DC fixtures, shared by the integration and e2e suites: one DC per machine at a time.
pytest_plugins = ["tests.testbed"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for suite in SUITES:
            if suite in item.path.parts:
                item.add_marker(getattr(pytest.mark, suite))


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """An in-memory Azurite on free ports, for the whole session; stopped at its end."""
    with Azurite() as storage:
        yield storage
