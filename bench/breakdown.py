"""Where a request's time goes: the stage spans of `writeback.tracing`, collected in memory.

The HTTP path is run once more with OpenTelemetry's SDK and an in-memory span exporter in this
process: function_app's reset handler (`writeback.cloud.http.submit`) over the cloud side wired
from the local stack's app settings (Azurite tables, the local Service Bus broker, the key files)
and a relay wired from the local stack's relay.toml (the local DC, its journal on disk) on its
own thread and event loop, in place of the stack's relay process for the duration (it is
restarted after). The two sides then share one interpreter, so a stage can wait for the other
side's work (the settlement, after the outcome is sent, waits for the cloud's audit writes): the
figures are where the time goes, and the separate end-to-end runs are the latencies. Each
request's spans are one trace; a stage met twice in one request (a policy read) is summed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import azure.functions as func
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack import localstack
from writeback.cloud import bootstrap as cloud_bootstrap
from writeback.cloud import http
from writeback.protocol import Operation
from writeback.relay import bootstrap as relay_bootstrap
from writeback.relay.config import Config
from writeback.tracing import Stage

REQUEST = "writeback reset"  # the API request's span (writeback.cloud.telemetry)
RETURN = "outcome back (relay sent → cloud verified)"  # derived: OUTCOME end - OUTCOME_SEND end
# Spans that contain others: shown as totals, never blamed for a miss; and the work that comes
# after the answer and so delays no caller (the relay's settlement, the account index, the
# removal of the pending mark), shown in bold too.
CONTAINERS = frozenset(
    {REQUEST, Stage.RELAY, Stage.APPLY, Stage.OUTCOME, Stage.SETTLE, Stage.AUDIT_LINK,
     Stage.AUDIT_UNMARK}
)  # fmt: skip
ROWS = [REQUEST, *[s.value for s in Stage], RETURN]


@dataclass(frozen=True)
class Breakdown:
    """Per stage, the milliseconds it took in each request that met it."""

    concurrency: int
    stages: dict[str, list[float]]

    def usual(self, stage: str) -> bool:
        """Whether most requests met `stage` (a policy read once a minute is no one's stage)."""
        requests = len(self.stages.get(REQUEST) or self.stages.get(Stage.RELAY) or [])
        return 2 * len(self.stages.get(stage) or []) >= requests

    def cut(self, stage: str, percent: int) -> float | None:
        values = self.stages.get(stage)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


@contextmanager
def collecting() -> Iterator[InMemorySpanExporter]:
    """The SDK with an in-memory exporter as this process's tracer provider (set once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()


def summarise(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], concurrency: int) -> Breakdown:
    """Stage durations per request, a request being one trace with a cloud or relay root."""
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        traces[span.context.trace_id].append(span)
    stages: dict[str, list[float]] = defaultdict(list)
    for members in traces.values():
        per: dict[str, float] = defaultdict(float)
        ends: dict[str, int] = {}
        for span in members:
            if span.start_time is None or span.end_time is None:
                continue
            per[span.name] += (span.end_time - span.start_time) / 1e6
            ends[span.name] = span.end_time
        if Stage.OUTCOME in ends and Stage.OUTCOME_SEND in ends:
            per[RETURN] = max(0.0, (ends[Stage.OUTCOME] - ends[Stage.OUTCOME_SEND]) / 1e6)
        for name, ms in per.items():
            stages[name].append(ms)
    return Breakdown(concurrency, dict(stages))


def table(breakdowns: list[Breakdown]) -> list[str]:
    """A markdown table: p50 and p95 of each stage at each concurrency."""
    head = " | ".join(f"c={b.concurrency} p50 | c={b.concurrency} p95" for b in breakdowns)
    lines = [f"| stage (ms) | {head} |", "|---|" + "---|" * (2 * len(breakdowns))]
    for stage in ROWS:
        if not any(b.stages.get(stage) for b in breakdowns):
            continue
        cells = []
        for b in breakdowns:
            for percent in (50, 95):
                value = b.cut(stage, percent)
                cells.append("-" if value is None else f"{value:.2f}")
        name = f"**{stage}**" if stage in CONTAINERS else f"`{stage}`" if stage != RETURN else stage
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def heaviest(
    breakdown: Breakdown,
    percent: int,
    among: str = "",
    skip: frozenset[str] = frozenset(),
    count: int = 1,
) -> list[tuple[str, float]]:
    """The `count` stages (usual ones, not containers, not in `skip`, named with prefix `among`)
    with the largest `percent` cut, largest first, with that cut."""
    candidates = [
        (stage, breakdown.cut(stage, percent) or 0.0)
        for stage in breakdown.stages
        if stage not in CONTAINERS
        and stage not in skip
        and stage.startswith(among)
        and breakdown.usual(stage)
    ]
    return sorted(candidates, key=lambda item: item[1], reverse=True)[:count]


def widest(
    breakdown: Breakdown, among: str = "", skip: frozenset[str] = frozenset()
) -> tuple[str, float]:
    """The stage (usual, not a container nor in `skip`, named with prefix `among`) whose tail
    (p99 - p50) is widest, and that spread."""
    spreads = [
        (stage, (breakdown.cut(stage, 99) or 0.0) - (breakdown.cut(stage, 50) or 0.0))
        for stage in breakdown.stages
        if stage not in CONTAINERS
        and stage not in skip
        and stage.startswith(among)
        and breakdown.usual(stage)
    ]
    return max(spreads, key=lambda item: item[1], default=("none", 0.0))


def _reset_request(key: str, upn: str, password: str) -> func.HttpRequest:
    body = {"user": upn, "newPassword": password, "initiator": "admin"}
    return func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/v1/passwords/reset",
        headers={"x-functions-key": key, "content-type": "application/json"},
        params={},
        route_params={},
        body=json.dumps(body).encode(),
    )


async def http_path(
    exporter: InMemorySpanExporter,
    state: Path,
    levels: dict[int, list[str]],
    password: str,
) -> list[Breakdown]:
    """Resets of `levels` (concurrency → its users) through the in-process HTTP path."""
    saved = json.loads((state / "cloud.json").read_text())
    key = saved["api_key"]
    localstack.stop_relay(state)
    relay = relay_bootstrap.build(Config.load(state / "relay" / "relay.toml"))
    relay_loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def serve() -> None:  # the relay on its own event loop, as in its own process
        relay_loop.run_until_complete(relay.agent.run(stop))
        relay_loop.run_until_complete(relay.close())

    running = threading.Thread(target=serve, name="relay")
    running.start()
    cloud = await cloud_bootstrap.build(saved["settings"])
    http.use(cloud)
    results = []
    try:
        await _reset(key, levels[min(levels)][0], password, deadline=time.monotonic() + 60)
        for level, upns in sorted(levels.items()):
            exporter.clear()
            parts = [upns[i::level] for i in range(level)]

            async def worker(part: list[str]) -> None:
                for upn in part:
                    await _reset(key, upn, password)

            await asyncio.gather(*(worker(part) for part in parts))
            results.append(summarise(exporter.get_finished_spans(), level))
    finally:
        http.use(None)
        await cloud.close()
        relay_loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(running.join)
        relay_loop.close()
        localstack.start_relay(state)
    return results


async def _reset(key: str, upn: str, password: str, deadline: float = 0.0) -> None:
    """One reset through the handler; until `deadline`, a refusal for want of a heartbeat is
    tried again (the in-process relay's first heartbeat reaches the host within seconds)."""
    while True:
        response = await http.submit(_reset_request(key, upn, password), Operation.RESET)
        answer = json.loads(response.get_body())
        if answer.get("reason") == "applied":
            return
        if answer.get("reason") != "agent.unavailable" or time.monotonic() > deadline:
            raise SystemExit(f"traced reset failed: {answer}")
        await asyncio.sleep(0.5)
