"""The chaos soak, short (`make soak` runs the long one; docs/reliability.md): about 60 writes at
concurrency 8 through a stack of its own on the session's DC, with two relays, while relays are
SIGKILLed and the broker, Azurite and the DC restarted, then the soak's own checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import soak
from tests.testbed import TestBed

pytestmark = pytest.mark.timeout(180)
PLAN = soak.SoakPlan(
    writes=60,
    concurrency=8,
    seed=15,
    users=16,
    fault_gap=(0.3, 1.2),
    downtime=(0.1, 0.6),
    request_deadline=60.0,
    min_rounds=2,
)


class TestChaosSoak:
    def test_nothing_lost_nothing_twice_every_answer_true(
        self, testbed: TestBed, tmp_path: Path
    ) -> None:
        """Under every kind of fault, each write ends with the outcome the DC and the audit trail
        agree on, none is written twice or lost, and no password reaches a log or dead letter."""
        lines: list[str] = []
        figures = soak.run(PLAN, tmp_path, dc=testbed.dc, domain=testbed.domain, out=lines.append)
        report = "\n".join(lines)
        assert sum(figures.by_operation.values()) == PLAN.writes, report
        assert all(figures.faults[kind] >= 2 for kind in soak.FAULT_KINDS), report
        assert figures.finals["applied applied"] > 0, report
        assert figures.finals["rejected policy.length"] > 0, report
        assert figures.problems == [], report
        assert testbed.dc.running
