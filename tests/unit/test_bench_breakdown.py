"""The report's breakdown and targets (`python -m bench.report` runs them on the local stack):
stage figures from real spans, and a missed target naming what holds it back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench import breakdown, targets
from tests.unit.test_tracing import spans, traced_reset  # noqa: F401 - the fixture
from writeback.tracing import Stage


@dataclass(frozen=True)
class Run:
    path: str
    concurrency: int
    latencies: list[float]
    seconds: float


def runs(raw_ms: float, relay_ms: float, http_ms: float) -> list[Run]:
    return [
        Run(path, level, [ms] * 10, 10 * ms / 1000 / level * (1 if level == 1 else 1.2))
        for path, ms in ((targets.RAW, raw_ms), (targets.RELAY, relay_ms), (targets.HTTP, http_ms))
        for level in (1, 4)
    ]


class TestBreakdown:
    async def test_a_traced_reset_gives_each_stage_a_figure(
        self,
        tmp_path: Path,
        spans: InMemorySpanExporter,  # noqa: F811 - the fixture
    ) -> None:
        """One reset's spans become one request's figures: every stage it met, the way back of
        the outcome derived, and the table shows them."""
        await traced_reset(tmp_path)
        found = breakdown.summarise(spans.get_finished_spans(), 1)
        for stage in (breakdown.REQUEST, Stage.SEAL, Stage.AUDIT_FINAL, Stage.RELAY, Stage.OPEN):
            assert len(found.stages[stage]) == 1, stage
        assert found.stages[breakdown.RETURN][0] >= 0
        rows = breakdown.table([found])
        assert any(row.startswith("| `writeback.seal` |") for row in rows)

    def test_a_missed_target_names_the_stage_that_holds_it_back(self) -> None:
        """With the HTTP path at 3x the raw modify, the p50 target is missed and names the
        largest stage besides the modify; the targets met say so."""
        stages = breakdown.Breakdown(
            1,
            {
                Stage.MODIFY.value: [30.0, 31.0],
                Stage.AUDIT_FINAL.value: [20.0, 21.0],
                Stage.SEAL.value: [0.5, 0.6],
                Stage.SETTLE.value: [40.0, 41.0],  # after the answer: never blamed
            },
        )
        found = targets.evaluate(
            runs(30, 31, 90), {1: stages, 4: stages}, stages, 100.0, ("azure.functions", 90.0)
        )
        first, *_, cold = found
        assert not first.met
        assert "`writeback.audit.final` 20.5" in first.held_back_by
        assert "settle" not in first.held_back_by
        assert cold.met
        assert targets.table(found)[2].endswith("| missed: " + first.held_back_by + " |")
