"""The chaos soak (`python -m devstack soak`, `make soak`): writes through the whole local stack
while a fault injector kills and restarts its parts, then checks that nothing was lost, nothing
was written twice and every answer was true (docs/reliability.md).

Order: a DC (fresh, or the caller's), the soak's stack with two relays (`soak_stack`), a pool of
fresh users, then the writes (`soak_load`) at the given concurrency while `FaultInjector` SIGKILLs
a relay and restarts the broker, Azurite and the DC at moments drawn from a `random.Random` seeded
with the run's seed; then the checks (`soak_checks`) and the figures as a table. Everything it
started is stopped before it returns. It never prints a password.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from devstack import seed, soak_checks, soak_load
from devstack.samba import SambaDC
from devstack.soak_checks import Figures
from devstack.soak_directory import DirectoryProbe
from devstack.soak_stack import RELAY_IDS, SoakStack, provision_dc
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue

FAULT_KINDS = (
    "relay SIGKILL", "broker restart", "Azurite restart", "DC restart",
    # What Azure Service Bus does to live links and callers (devstack/servicebus faults).
    "broker forced detach", "broker server-busy",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SoakPlan:
    """How big a run is and how often faults come."""

    writes: int = 1000
    concurrency: int = 8
    seed: int = 1
    users: int = 48
    fault_gap: tuple[float, float] = (2.0, 6.0)  # seconds between faults, drawn uniformly
    downtime: tuple[float, float] = (0.2, 2.0)  # how long a stopped part stays down
    request_deadline: float = 150.0  # how long a caller follows one request to its end
    min_rounds: int = 0  # rounds of faults finished even if the writes end first


class FaultInjector(threading.Thread):
    """Injects faults in shuffled rounds (each kind once per round, a relay kill twice) at
    random moments until stopped; restarts what it stopped before injecting the next."""

    def __init__(self, stack: SoakStack, plan: SoakPlan) -> None:
        super().__init__(name="soak-faults", daemon=True)
        self.stack = stack
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}:faults")  # noqa: S311 - a reproducible schedule
        self.done = threading.Event()  # set when the writes are done
        self._owed = threading.Event()  # never set: waited on for a pause that must not end early
        self.counts: collections.Counter[str] = collections.Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        order: list[str] = []
        rounds = 0
        try:
            while True:
                owed = bool(order) or rounds < self.plan.min_rounds
                # A seeded pause between faults; once the writes are done, only owed rounds.
                (self._owed if owed else self.done).wait(self.rng.uniform(*self.plan.fault_gap))
                if self.done.is_set() and not owed:
                    return
                if not order:
                    order = [*FAULT_KINDS, FAULT_KINDS[0]]
                    self.rng.shuffle(order)
                    rounds += 1
                kind = order.pop()
                self.inject(kind)
                self.counts[kind] += 1
        except BaseException as exc:  # a part that would not come back: the run stops on it
            self.error = exc

    def inject(self, kind: str) -> None:
        stack, downtime = self.stack, self.rng.uniform(*self.plan.downtime)
        if kind == "relay SIGKILL":
            relay_id = self.rng.choice(RELAY_IDS)
            stack.kill_relay(relay_id)
            self._owed.wait(downtime)
            stack.start_relay(relay_id)
        elif kind == "broker restart":
            stack.bus.stop()
            self._owed.wait(downtime)
            stack.bus.start()
        elif kind == "Azurite restart":
            stack.azurite.stop()
            self._owed.wait(downtime)
            stack.azurite.start()
        elif kind == "broker forced detach":
            stack.bus.detach()  # every link of every queue, as an entity update does
        elif kind == "broker server-busy":
            stack.bus.faults.busy(self.rng.randint(2, 10))  # the next operations are throttled
        else:
            stack.dc.stop(release=False)
            self._owed.wait(downtime)
            stack.dc.start()

    def stop(self) -> None:
        self.done.set()
        self.join(120)


def run(
    plan: SoakPlan,
    state: Path,
    *,
    dc: SambaDC | None = None,
    domain: seed.SeededDomain | None = None,
    out: Callable[[str], None] = print,
) -> Figures:
    """One soak run under `state` (a fresh DC there unless `dc` and `domain` are given)."""
    own_dc = dc is None or domain is None
    if dc is None or domain is None:
        dc, domain = provision_dc(state / "dc")
    stack = SoakStack(dc, domain, state, lifetime_seconds=60)
    figures = Figures(writes=plan.writes, concurrency=plan.concurrency, seed=plan.seed)
    faults = FaultInjector(stack, plan)
    probe = DirectoryProbe(dc)
    try:
        stack.start()
        workload = soak_load.create_users(dc, domain, plan.users)
        figures.users = len(workload.users)
        caller = soak_load.Caller(stack.url, stack.api_key, plan.request_deadline)
        out(f"soak: {plan.writes} writes, {plan.users} users, concurrency {plan.concurrency}")
        started = time.monotonic()
        faults.start()
        try:
            soak_load.run(
                workload, caller, probe, writes=plan.writes, concurrency=plan.concurrency,
                seed_value=plan.seed, progress=_progress(out, plan.writes),
            )  # fmt: skip
        finally:
            faults.stop()
        figures.elapsed = time.monotonic() - started
        figures.faults.update(faults.counts)
        if faults.error is not None:
            raise faults.error
        _check(figures, workload, stack, probe)
    finally:
        probe.close()
        stack.close()
        if own_dc:
            dc.stop()
    out(report(figures))
    return figures


def _progress(out: Callable[[str], None], writes: int) -> Callable[[int], None]:
    step = max(1, writes // 10)
    return lambda done: out(f"  {done} of {writes} writes final") if done % step == 0 else None


def _check(
    figures: Figures, workload: soak_load.Workload, stack: SoakStack, probe: DirectoryProbe
) -> None:
    for part in (stack.dc, stack.azurite):
        if not part.running:
            part.start()
    stack.stop_relays()  # drained, so their journals are whole
    soak_checks.outcomes(figures, workload)
    soak_checks.audit(figures, workload, stack.azurite.connection_string)
    soak_checks.journals(figures, workload, [stack.journal(r) for r in RELAY_IDS])
    soak_checks.directory(figures, workload, stack.dc, probe)
    stack.azurite.stop()  # flushed to its files, which the scan reads
    files = [*stack.log_files(), *(stack.journal(r) for r in RELAY_IDS)]
    files += [p for p in (stack.state / "azurite").rglob("*") if p.is_file()]
    queues = [requests_queue(stack.domain.dns_domain), OUTCOMES_QUEUE, HEARTBEATS_QUEUE]
    soak_checks.secrets(figures, workload.passwords, files, stack.bus, queues)


def report(figures: Figures) -> str:
    """The figures as Markdown tables (printed at the end; docs/reliability.md holds one run)."""
    rows = [
        "| | |",
        "|---|---|",
        f"| writes | {sum(figures.by_operation.values())} of {figures.writes} |",
        f"| users, concurrency, seed | {figures.users}, {figures.concurrency}, {figures.seed} |",
        f"| elapsed | {figures.elapsed:.0f} s |",
        *(f"| requests: {k} | {v} |" for k, v in sorted(figures.by_operation.items())),
        *(f"| faults: {k} | {figures.faults[k]} |" for k in FAULT_KINDS),
        *(f"| final: {k} | {v} |" for k, v in sorted(figures.finals.items())),
        *(f"| answers before the final: {k} | {v} |" for k, v in sorted(figures.answers.items())),
        f"| duplicate writes | {len(figures.duplicates)} |",
        f"| requests lost | {len(figures.lost)} |",
        f"| wrong outcomes | {len(figures.wrong)} |",
        f"| passwords found in logs, journals, storage, dead letters | {len(figures.secrets)} |",
        f"| dead-lettered messages | {figures.dead_letters} |",
        f"| journal entries left unfinished | {figures.unfinished_journal} |",
    ]
    problems = [f"- {p}" for p in figures.problems]
    verdict = "PASSED" if not problems else f"FAILED ({len(problems)} problems)"
    return "\n".join(["", *rows, "", f"soak {verdict}", *problems])
