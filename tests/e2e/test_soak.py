"""The chaos soak, short (`make soak` runs the long one; docs/reliability.md): 48 writes at
concurrency 8 through a stack of its own on the session's DC, with two relays, while relays are
SIGKILLed and the broker, Azurite and the DC restarted, then the soak's own checks.

Faults come every 1 to 2.5 seconds (the long soak: 2 to 6). Denser than that, one request can
meet a fault at each of its five deliveries (the queues' MaxDeliveryCount, as deployed) and be
dead-lettered; its caller then learns `request.outcome_unknown` only five minutes after the
request expired (docs/reliability.md), longer than a test waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import soak
from tests.testbed import TestBed

pytestmark = pytest.mark.timeout(420)  # about 70 s alone; a loaded 2-core machine is slower
PLAN = soak.SoakPlan(
    writes=48,
    concurrency=8,
    seed=15,
    users=16,
    fault_gap=(1.0, 2.5),
    downtime=(0.1, 0.6),
    request_deadline=100.0,  # the stack's request lifetime (60 s), redeliveries and the outcome
    min_rounds=1,
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
        assert all(figures.faults[kind] >= 1 for kind in soak.FAULT_KINDS), report
        assert figures.finals["applied applied"] > 0, report
        assert figures.finals["rejected policy.length"] > 0, report
        assert figures.problems == [], report
        assert testbed.dc.running
