"""The performance report: the baseline, the relay alone and the full HTTP path, in one run.

On the same local Samba DC, in the same run, at concurrency 1, 4 and 16 (each worker its own
users; `--requests` admin resets per level and path; at concurrency 1 the three paths take turns,
eight resets each, so that the DC's pace moving during the run moves all three alike):
- raw ldap3: a replace of unicodePwd over LDAPS, one connection per worker (the baseline);
- the relay alone: requests sealed and signed as the cloud does, queued on the in-process
  transport, handled by the relay pipeline (verify, journal, open, directory layer with its
  lookups and policy pre-check, signed outcome, settlement) with one LdapDirectory;
- the full HTTP path: POST /api/v1/passwords/reset on the local Functions host → the local
  Service Bus broker → the relay process → the DC → the outcome back to the HTTP caller;
plus the cold import of function_app.py (the median of five fresh interpreters) and the relay
process's memory after the HTTP runs. Then, with OpenTelemetry's SDK and an in-memory exporter
installed only now, the stage breakdown of the HTTP path at concurrency 1 and 4 and of the relay
alone (`bench.breakdown`), and issue #17's targets as ratios from this run, each miss naming the
stages behind it (`bench.targets`). Prints it all and, with `--write`, puts it into
docs/performance.md with the machine it ran on. Run with `python -m bench.report` as root (it
starts the local stack, and stops what it started when it ends, however it ends).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ldap3
from joserfc.jwk import ECKey, KeySet, RSAKey

from bench import breakdown, targets
from devstack import localstack, seed, stack
from writeback import sealing
from writeback.protocol import Initiator, Operation
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.relay.cli import load_directory_settings
from writeback.relay.directory import LdapDirectory
from writeback.relay.journal import Journal
from writeback.relay.ldap import ValidatingTls
from writeback.relay.pipeline import Pipeline, RelayKeys
from writeback.relay.policy import encode_unicode_pwd
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig

PASSWORD = "Bench-Report-Pa55!"
LEVELS = (1, 4, 16)
PAIRED_TURN = 8  # resets per path per turn at concurrency 1 (see `paired`)
BREAKDOWN_LEVELS = (1, 4)
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    path: str
    concurrency: int
    latencies: list[float]  # ms per request
    seconds: float  # wall time for all of them

    def row(self) -> str:
        cuts = statistics.quantiles(self.latencies, n=100)
        rate = len(self.latencies) / self.seconds
        return (
            f"| {self.path} | {self.concurrency} | {cuts[49]:.1f} | {cuts[94]:.1f} | "
            f"{cuts[98]:.1f} | {rate:.1f} |"
        )


def http_reset(url: str, key: str, upn: str) -> float:
    body = json.dumps({"user": upn, "newPassword": PASSWORD, "initiator": "admin"}).encode()
    request = urllib.request.Request(  # noqa: S310 - http to the local host
        f"{url}/v1/passwords/reset", data=body, method="POST",
        headers={"x-functions-key": key, "Content-Type": "application/json"},
    )  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - see above
        answer = json.loads(response.read())
    if answer.get("reason") != "applied":
        raise SystemExit(f"HTTP reset failed: {answer}")
    return 1000 * (time.perf_counter() - started)


def cold_import(statement: str, runs: int = 5) -> float:
    """Seconds `statement` takes in a fresh interpreter (the median of `runs`)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    return statistics.median(
        float(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True))  # noqa: S603
        for _ in range(runs)
    )


def heaviest_import(module: str) -> tuple[str, float]:
    """The direct import of `module` that takes longest (cumulative ms, `python -X importtime`)."""
    output = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    direct: list[tuple[str, float]] = []
    for line in output.splitlines():  # a module's line comes after its imports' lines
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3:
            continue
        name, depth = fields[2].strip(), (len(fields[2]) - len(fields[2].lstrip()) - 1) // 2
        if depth == 0 and name == module:
            break
        if depth == 0:
            direct = []
        elif depth == 1:
            direct.append((name, int(fields[1]) / 1000))
    return max(direct, key=lambda item: item[1], default=("none", 0.0))


def raw(running: stack.Stack, dns: list[str], workers: int) -> Run:
    def worker(part: list[str]) -> list[float]:
        connection = ldap3.Connection(
            ldap3.Server("localhost", port=636, use_ssl=True, get_info=ldap3.NONE,
                         tls=ValidatingTls(str(running.dc.ca_file))),
            user=running.domain.relay.upn, password=running.domain.relay.password,
            auto_bind=True,
        )  # fmt: skip
        value, times = encode_unicode_pwd(PASSWORD), []
        for dn in part:
            started = time.perf_counter()
            connection.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [value])]})
            times.append(1000 * (time.perf_counter() - started))
            if connection.result["result"] != 0:
                raise SystemExit(f"baseline failed: {connection.result['description']}")
        connection.unbind()
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(worker, [dns[i::workers] for i in range(workers)]))
    return Run("raw ldap3 modify", workers, [t for p in parts for t in p],
               time.perf_counter() - started)  # fmt: skip


class RelayAlone:
    """The relay pipeline on the in-process transport with one LdapDirectory, connected as the
    relay's agent starts; `handle` times a batch of resets (one journal for all batches)."""

    def __init__(self, running: stack.Stack, state: Path, tag: str) -> None:
        self.domain = domain = running.domain.dns_domain
        self.tag = tag
        enc = RSAKey.generate_key(3072, parameters={"kid": "bench.enc.a", "use": "enc"})
        sig = ECKey.generate_key("P-256", parameters={"kid": "bench.sig.a", "use": "sig"})
        cloud = {"kid": "cloud.sig.a", "use": "sig"}
        self.cloud_key = ECKey.generate_key("P-256", parameters=cloud)
        broker = MemoryBroker([
            QueueConfig(requests_queue(domain), lock_duration=60, duplicate_detection_window=3600),
            QueueConfig(OUTCOMES_QUEUE, requires_session=True, default_ttl=3600),
            QueueConfig(HEARTBEATS_QUEUE),
        ])  # fmt: skip
        settings = load_directory_settings(running.relay_config)
        self.directory = LdapDirectory(settings, settings.bind_password())
        self.transport = InProcessRelay(broker, domain)
        self.public = KeySet(
            [type(k).import_key(k.as_dict(private=False)) for k in (enc, self.cloud_key)]
        )
        self.pipeline = Pipeline(
            relay_id="bench", domain=domain, directory=self.directory, transport=self.transport,
            journal=Journal(state / f"journal{tag}.sqlite3", replay_window=3600),
            keys=RelayKeys(KeySet([self.public.keys[1]]), KeySet([enc]), sig),
        )  # fmt: skip
        self.sender = InProcessCloud(broker)
        self.sent = 0

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.capabilities)  # connected, as the agent starts

    async def handle(self, upns: list[str], workers: int) -> tuple[list[float], float]:
        """Each reset's handling time (ms), and the seconds all of them took."""
        now = int(time.time())
        for upn in upns:
            self.sent += 1
            message = RequestMessage(
                id=f"bench{self.tag}-{self.sent}", domain=self.domain, operation=Operation.RESET,
                user=upn, issued_at=now, expires_at=now + 600, initiator=Initiator.ADMIN,
            )  # fmt: skip
            token = sealing.seal_request(message, Secrets(PASSWORD), KeySet([self.public.keys[0]]),
                                         self.cloud_key)  # fmt: skip
            await self.sender.send_request(self.domain, message.id, token, now + 600)
        latencies: list[float] = []

        async def worker() -> None:
            while len(latencies) < len(upns):
                for delivery in await self.transport.receive(1, 0.2):
                    started = time.perf_counter()
                    await self.pipeline.handle(delivery)
                    latencies.append(1000 * (time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return latencies, time.perf_counter() - started

    def close(self) -> None:
        self.directory.close()


async def relay_alone(
    running: stack.Stack, upns: list[str], workers: int, state: Path, tag: str = ""
) -> Run:
    relay = RelayAlone(running, state, f"{tag}-{workers}")
    try:
        await relay.start()
        latencies, seconds = await relay.handle(upns, workers)
    finally:
        relay.close()
    return Run("the relay alone", workers, latencies, seconds)


async def paired(
    running: stack.Stack, env: dict[str, str], users: dict[str, list[str]], state: Path
) -> list[Run]:
    """The three paths at concurrency 1, taken in turns of PAIRED_TURN resets each (raw, relay,
    HTTP, raw, ...), so that a DC that is slower for a while slows all three alike: their
    ratios compare like with like."""
    relay = RelayAlone(running, state, "-1")
    url, key = env["WRITEBACK_API_URL"], env["WRITEBACK_API_KEY"]
    http_reset(url, key, users["http"][0])  # warm
    times: dict[str, tuple[list[float], float]] = {path: ([], 0.0) for path in users}
    try:
        await relay.start()
        for first in range(0, len(users["raw"]), PAIRED_TURN):
            turn = {path: upns[first : first + PAIRED_TURN] for path, upns in users.items()}
            done = {
                "raw": raw(running, turn["raw"], 1),
                "relay": Run("the relay alone", 1, *await relay.handle(turn["relay"], 1)),
                "http": http(url, key, turn["http"], 1),
            }
            for path, run in done.items():
                latencies, seconds = times[path]
                times[path] = (latencies + run.latencies, seconds + run.seconds)
    finally:
        relay.close()
    return [
        Run(name, 1, *times[path])
        for path, name in (("raw", "raw ldap3 modify"), ("relay", "the relay alone"),
                           ("http", "HTTP API, end to end"))
    ]  # fmt: skip


def http(url: str, key: str, upns: list[str], workers: int) -> Run:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        latencies = list(pool.map(lambda upn: http_reset(url, key, upn), upns))
    return Run("HTTP API, end to end", workers, latencies, time.perf_counter() - started)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.machine())  # fmt: skip
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    samba = subprocess.run(
        ["samba", "--version"],  # noqa: S607 - the distribution's samba, found on PATH
        capture_output=True,
        text=True,
        check=False,
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB, {platform.system()}, "
        f"Python {platform.python_version()}, "
        f"{samba.stdout.strip().replace('Version', 'Samba') or 'Samba'}"
    )


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="resets per path and level")
    parser.add_argument("--write", action="store_true", help="update docs/performance.md")
    args = parser.parse_args()
    count = args.requests
    load_before = os.getloadavg()[0]
    running, env = localstack.up()
    admin = running.dc.admin_connection()
    domain = running.domain

    def users(prefix: str) -> list[seed.Account]:
        return [
            seed.create_user(admin, domain.users_ou, domain.dns_domain, seed.unique_name(prefix))
            for _ in range(count)
        ]

    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as state:
        runs += asyncio.run(paired(running, env, {
            "raw": [u.dn for u in users("raw1")], "relay": [u.upn for u in users("rly1")],
            "http": [u.upn for u in users("htp1")],
        }, Path(state)))  # fmt: skip
        for level in LEVELS[1:]:
            runs.append(raw(running, [u.dn for u in users(f"raw{level}")], level))
            runs.append(asyncio.run(relay_alone(
                running, [u.upn for u in users(f"rly{level}")], level, Path(state))))  # fmt: skip
            http_users = [u.upn for u in users(f"htp{level}")]
            http_reset(env["WRITEBACK_API_URL"], env["WRITEBACK_API_KEY"], http_users[0])  # warm
            runs.append(http(env["WRITEBACK_API_URL"], env["WRITEBACK_API_KEY"], http_users, level))
        relay_memory = rss_mb(int((stack.STATE / "pids" / "relay.pid").read_text()))
        print(*(r.row() for r in runs), sep="\n", file=sys.stderr, flush=True)  # so far
        # The breakdown, with the SDK from here on: the runs above paid for no-op spans only.
        with breakdown.collecting() as exporter:
            traced = [u.upn for u in users("trly")]
            asyncio.run(relay_alone(running, traced, 1, Path(state), tag="-traced"))
            relay_stages = breakdown.summarise(exporter.get_finished_spans(), 1)
            levels = {level: [u.upn for u in users(f"trc{level}")] for level in BREAKDOWN_LEVELS}
            http_stages = asyncio.run(breakdown.http_path(exporter, stack.STATE, levels, PASSWORD))
    admin.unbind()
    app_import = cold_import("import function_app")
    base_import = cold_import("import azure.functions")
    results = targets.evaluate(
        runs,
        {b.concurrency: b for b in http_stages},
        relay_stages,
        1000 * app_import,
        heaviest_import("function_app"),
    )
    lines = [
        f"Machine: {machine()}; load average {load_before:.2f} before the run (other work "
        "makes single figures noisy: compare the ratios, which come from the same run).",
        f"{count} admin resets per path and concurrency level, each on its own fresh user.",
        "",
        "| path | concurrency | p50 ms | p95 ms | p99 ms | requests/s |",
        "|---|---|---|---|---|---|",
        *[r.row() for r in sorted(runs, key=lambda r: (r.path, r.concurrency))],
        "",
        f"Where the time goes: the HTTP path's stages ({count} resets per level, spans collected "
        "in memory, cloud and relay in one process: see bench/breakdown.py).",
        "",
        *breakdown.table(http_stages),
        "",
        "The relay alone, at concurrency 1, by stage:",
        "",
        *breakdown.table([relay_stages]),
        "",
        *targets.table(results),
        "",
        f"Cold import of function_app.py: {1000 * app_import:.0f} ms (`import azure.functions` "
        f"alone: {1000 * base_import:.0f} ms). Relay process memory after the HTTP runs: "
        f"{relay_memory:.0f} MB RSS.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        page = ROOT / "docs" / "performance.md"
        text = page.read_text() if page.exists() else ""
        begin, end = "<!-- bench.report:begin -->", "<!-- bench.report:end -->"
        if begin in text and end in text:
            text = text[: text.index(begin)] + f"{begin}\n{report}\n{end}" + text.split(end, 1)[1]
            page.write_text(text)
        else:
            print(f"{page} has no {begin} … {end} block to fill", file=sys.stderr)


def main() -> None:
    """Measure on the local stack, and leave it as it was found (running or not)."""
    with localstack.borrowed():
        measure()


if __name__ == "__main__":
    main()
