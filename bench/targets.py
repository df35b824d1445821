"""Issue #17's targets, as ratios of figures measured in one run on one DC, each met or missed;
a miss names the stage (from `bench.breakdown`) or the import that holds it back."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bench.breakdown import Breakdown, heaviest, widest
from writeback.tracing import Stage

RAW, RELAY, HTTP = "raw ldap3 modify", "the relay alone", "HTTP API, end to end"
# Not the relay's own work when it runs alone: the requests are queued before it starts.
QUEUED = frozenset({Stage.DELIVERY.value, Stage.MODIFY.value})


class Measured(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def latencies(self) -> list[float]: ...
    @property
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class Target:
    text: str
    measured: str
    met: bool
    held_back_by: str = ""

    def row(self) -> str:
        verdict = "met" if self.met else f"missed: {self.held_back_by}"
        return f"| {self.text} | {self.measured} | {verdict} |"


def _run(runs: Sequence[Measured], path: str, level: int) -> Measured:
    return next(r for r in runs if r.path == path and r.concurrency == level)


def _cut(latencies: list[float], percent: int) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[percent - 1]


def _stage(name: str, ms: float, what: str = "p50") -> str:
    return f"`{name}` ({what} {ms:.1f} ms)"


def _stages(found: list[tuple[str, float]]) -> str:
    return ", ".join(f"`{name}` {ms:.1f}" for name, ms in found) + " ms (p50)"


def evaluate(
    runs: Sequence[Measured],
    http_stages: dict[int, Breakdown],
    relay_stages: Breakdown,
    cold_import_ms: float,
    import_culprit: tuple[str, float],
) -> list[Target]:
    raw1, relay1, http1 = (_run(runs, p, 1) for p in (RAW, RELAY, HTTP))
    raw4, http4 = _run(runs, RAW, 4), _run(runs, HTTP, 4)
    raw_p50 = statistics.median(raw1.latencies)
    http_p50, http_p99 = statistics.median(http1.latencies), _cut(http1.latencies, 99)
    relay_p50, relay_p99 = statistics.median(relay1.latencies), _cut(relay1.latencies, 99)
    rate = {r.path: len(r.latencies) / r.seconds for r in (raw4, http4)}
    throughput = rate[HTTP] / rate[RAW]
    skip = frozenset({Stage.MODIFY.value})  # the write itself: what the raw baseline does
    cloud1 = heaviest(http_stages[1], 50, skip=skip, count=4)
    tail1 = widest(http_stages[1])
    cloud4 = heaviest(http_stages[4], 50, skip=skip, count=2)
    relay_own = heaviest(relay_stages, 50, "writeback.relay", skip=QUEUED, count=4)
    relay_tail = widest(relay_stages, "writeback.relay", skip=frozenset({Stage.DELIVERY.value}))
    traced = (relay_stages.cut(Stage.RELAY, 50) or 0.0) - (relay_stages.cut(Stage.MODIFY, 50) or 0)
    return [
        Target(
            "HTTP end to end p50 at concurrency 1 ≤ 1.5x raw modify p50",
            f"{http_p50:.1f} / {raw_p50:.1f} ms = {http_p50 / raw_p50:.2f}x",
            http_p50 <= 1.5 * raw_p50,
            f"the largest stages besides the modify: {_stages(cloud1)}",
        ),
        Target(
            "HTTP end to end p99 at concurrency 1 ≤ 100 ms",
            f"{http_p99:.1f} ms = {http_p99 / 100:.2f}x the limit",
            http_p99 <= 100,
            f"the widest tail is {_stage(tail1[0], tail1[1], 'p99 - p50')}",
        ),
        Target(
            "HTTP throughput at concurrency 4 ≥ 90% of raw",
            f"{rate[HTTP]:.1f} / {rate[RAW]:.1f} req/s = {100 * throughput:.0f}%",
            throughput >= 0.9,
            f"at concurrency 4 the largest stages besides the modify: {_stages(cloud4)}",
        ),
        Target(
            "the relay alone adds ≤ 2 ms at p50 (concurrency 1)",
            f"{relay_p50:.1f} - {raw_p50:.1f} ms = {relay_p50 - raw_p50:+.1f} ms",
            relay_p50 - raw_p50 <= 2,
            f"in the traced run its handling took {traced:.1f} ms beside the modify (p50), "
            f"most in {_stages(relay_own)}",
        ),
        Target(
            "the relay alone: p99 ≤ 2x its p50 (concurrency 1)",
            f"{relay_p99:.1f} / {relay_p50:.1f} ms = {relay_p99 / relay_p50:.2f}x",
            relay_p99 <= 2 * relay_p50,
            f"the widest tail is {_stage(relay_tail[0], relay_tail[1], 'p99 - p50')}",
        ),
        Target(
            "cold import of function_app.py ≤ 250 ms (median of 5 fresh interpreters)",
            f"{cold_import_ms:.0f} ms = {cold_import_ms / 250:.2f}x the limit",
            cold_import_ms <= 250,
            f"the heaviest import is `{import_culprit[0]}` ({import_culprit[1]:.0f} ms)",
        ),
    ]


def table(targets: list[Target]) -> list[str]:
    return ["| target | measured | |", "|---|---|---|", *[t.row() for t in targets]]
