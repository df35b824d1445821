"""A local Functions host for function_app.py: the app indexed and invoked by the Python worker's
own code (`devstack.worker`), its triggers served the way the Azure Functions host serves them.

- HTTP: every `httpTrigger` on `/<routePrefix>/<route>` (prefix from host.json), matched as the
  host matches (`devstack.routes`): literal segments ignore case, and a method the function does
  not list is 404. The function's `$return` is encoded by the library and written back; an
  exception is a 500 with no body, as the host answers.
- Service Bus: each `serviceBusTrigger` reads its queue through the setting its `connection`
  names (a connection string here); the message is completed when the function returns and
  abandoned when it raises (`autoCompleteMessages`).
- Event Grid: the host's webhook, `POST /runtime/webhooks/eventgrid?functionName=<name>`, by the
  `aeg-event-type` header as the host's Event Grid extension reads it: `SubscriptionValidation`
  answers the handshake (200), `Notification` invokes the function once per event of the
  delivery (either schema) and answers 202, or 500 if one invocation failed (Event Grid
  retries), `Unsubscribe` is 202, anything else 400; an unknown function is 404. What an
  `eventGrid` output binding sets is appended to the file given as `published`, one line each.
- Timer: each `timerTrigger` runs on its NCRONTAB schedule (six fields, `%SETTING%` resolved),
  `runOnStartup` honoured, marked past due when it starts later than scheduled.
- The host's admin API for non-HTTP functions, `POST /admin/functions/<name>` with
  `{"input": ...}`, answers 202 and invokes: a timer now; an Event Hubs trigger with the input as
  its batch (a string is one event body, a list of strings is a batch): the local way to feed
  Entra's audit records to the real trigger (docs/development.md).
Not emulated: function keys (the app authenticates callers itself; the webhook's system key and
the admin API's master key are not checked), the Event Hubs and Service Bus scale controllers and
partitions, host.json concurrency and retry options, Key Vault references and identity-based
connections, schedule monitoring across restarts (a missed run is not caught up), the host's own
logging and telemetry. `func start` stays the way for those who have the Core Tools.
Run `python -m devstack.functions_host` (settings from the environment) or use `serve()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.servicebus.aio import ServiceBusClient
from cronsim import CronSim

from devstack import routes, triggers, worker

log = logging.getLogger("devstack.functions_host")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7071
LATE = 1.0  # seconds after its schedule a timer run counts as past due


def resolve_setting(value: str, environ: Mapping[str, str]) -> str:
    """A binding property's `%NAME%` replaced by the app setting NAME, as the host does."""
    if value.startswith("%") and value.endswith("%") and len(value) > 2:
        name = value[1:-1]
        if name not in environ:
            raise RuntimeError(f"binding refers to app setting {name}, which is not set")
        return environ[name]
    return value


class Host:
    """function_app.py's functions, indexed by the worker, and what serves each trigger."""

    def __init__(
        self,
        functions: list[worker.Indexed],
        environ: Mapping[str, str],
        *,
        prefix: str = routes.DEFAULT_PREFIX,
        published: Path | None = None,
    ) -> None:
        self.environ = environ
        self.published = published
        # A function whose binding names a setting that is not there is not loaded at all.
        self.functions = {f.name: f for f in functions if self.loadable(f)}
        http = [
            routes.compile_route(prefix, str(t.get("route") or f.name), t.get("methods") or (), f)
            for f in self.functions.values()
            if (t := f.trigger())["type"] == "httpTrigger"
        ]
        # Literal segments take precedence over parameters, as in ASP.NET Core routing.
        self.routes = sorted(http, key=lambda route: route.template.count("{"))

    def loadable(self, function: worker.Indexed) -> bool:
        """Whether every `%SETTING%` of the function's trigger resolves; the host does not load
        a function whose binding names a missing setting (the others still run)."""
        for value in function.trigger().values():
            if isinstance(value, str):
                try:
                    resolve_setting(value, self.environ)
                except RuntimeError as exc:
                    log.error("function %s not loaded: %s", function.name, exc)
                    return False
        return True

    def application(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024 * 1024)  # the host's default limit
        app.router.add_route("POST", "/runtime/webhooks/{name:(?i:eventgrid)}", self.event_grid)
        app.router.add_route("POST", "/admin/functions/{function}", self.admin_invoke)
        app.router.add_route("*", "/{path:.*}", self.http)
        return app

    async def http(self, request: web.Request) -> web.StreamResponse:
        # The path as sent: each route parameter is percent-decoded once, by the route.
        found = routes.resolve(self.routes, request.method, request.raw_path.split("?")[0])
        if found is None:
            return web.Response(status=404)
        route, parameters = found
        function: worker.Indexed = route.target
        data, metadata = triggers.http(
            request.method, str(request.url), request.headers, await request.read(),
            parameters, request.query,
        )  # fmt: skip
        try:
            invocation = await worker.invoke(function, {function.trigger()["name"]: data}, metadata)
        except Exception:
            log.exception("function %s raised", function.name)
            return web.Response(status=500)
        return _http_response(invocation.returned)

    async def event_grid(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("functionName", "")
        function = self.functions.get(name)
        if function is None or function.trigger()["type"] != "eventGridTrigger":
            return web.Response(status=404, text=f"cannot find function: '{name}'")
        kind = request.headers.get("aeg-event-type", "").lower()
        if kind == "unsubscribe":
            return web.Response(status=202)
        if kind not in ("subscriptionvalidation", "notification"):
            return web.Response(status=400, text="Bad request")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="the body is not JSON")
        if not isinstance(body, list | dict):
            return web.Response(status=400, text="not an event or a list of events")
        if kind == "subscriptionvalidation":
            first = body[0] if isinstance(body, list) and body else body
            data = first.get("data") if isinstance(first, dict) else None
            if isinstance(data, str):  # CloudEvents: the data is JSON inside a string
                data = json.loads(data)
            code = data.get("validationCode") if isinstance(data, dict) else None
            if code is None:
                return web.Response(status=400, text="no validation code")
            return web.json_response({"validationResponse": code})
        events = body if isinstance(body, list) else [body]
        outcomes = await asyncio.gather(
            *(self._deliver(function, event) for event in events), return_exceptions=True
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            return web.Response(status=500, text=type(failed[0]).__name__)
        return web.Response(status=202)

    async def _deliver(self, function: worker.Indexed, event: Any) -> None:
        if not isinstance(event, dict):
            raise TypeError("an event is not a JSON object")
        data, metadata = triggers.event_grid(event)
        try:
            invocation = await worker.invoke(function, {function.trigger()["name"]: data}, metadata)
        except Exception:
            log.exception("function %s raised", function.name)
            raise
        self.publish(invocation)

    def publish(self, invocation: worker.Invocation) -> None:
        """What `eventGrid` output bindings set, one JSON line per event (or logged)."""
        for datum in invocation.outputs.values():
            value = datum.value
            items = json.loads(value) if datum.type == "json" else value
            for item in items if isinstance(items, list) else [items]:
                line = item if isinstance(item, str) else json.dumps(item)
                if self.published is None:
                    log.info("event published: %s", line)
                else:
                    with self.published.open("a", encoding="utf-8") as sink:
                        sink.write(line.replace("\n", " ") + "\n")

    async def admin_invoke(self, request: web.Request) -> web.StreamResponse:
        function = self.functions.get(request.match_info["function"])
        if function is None:
            return web.Response(status=404)
        try:
            given = json.loads(await request.read() or b"{}").get("input")
        except (ValueError, AttributeError):
            return web.Response(status=400, text='the body is not {"input": ...}')
        trigger = function.trigger()
        if trigger["type"] == "timerTrigger":
            payload = triggers.timer(False, None, datetime.now(UTC))
        elif trigger["type"] == "eventHubTrigger":
            bodies = [given] if isinstance(given, str) else given
            if not isinstance(bodies, list) or not all(isinstance(b, str) for b in bodies):
                return web.Response(status=400, text="input: an event body or a list of them")
            payload = triggers.event_hubs_batch(bodies)
        else:
            return web.Response(status=400, text=f"{trigger['type']} is not invoked this way")
        try:
            await worker.invoke(function, {trigger["name"]: payload[0]}, payload[1])
        except Exception:
            log.exception("function %s raised", function.name)
            return web.Response(status=500)
        return web.Response(status=202)

    async def pump_queue(self, function: worker.Indexed, stop: asyncio.Event) -> None:
        """Deliver the trigger's queue to `function` until `stop` is set."""
        trigger = function.trigger()
        connection = self.environ.get(str(trigger["connection"]))
        if not connection:
            raise RuntimeError(f"setting {trigger['connection']} (a connection string) is not set")
        queue = resolve_setting(str(trigger["queueName"]), self.environ)
        async with ServiceBusClient.from_connection_string(connection) as client:
            while not stop.is_set():
                try:
                    async with client.get_queue_receiver(queue, max_wait_time=1) as receiver:
                        while not stop.is_set():
                            for received in await receiver.receive_messages(10, max_wait_time=1):
                                data, metadata = triggers.received(received)
                                try:
                                    await worker.invoke(function, {trigger["name"]: data}, metadata)
                                except Exception:
                                    log.exception("function %s raised", function.name)
                                    await receiver.abandon_message(received)
                                else:
                                    await receiver.complete_message(received)
                except Exception as exc:  # the broker went away: reconnect, as the host does
                    log.warning("queue %s: %s; reconnecting", queue, type(exc).__name__)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

    async def run_timer(self, function: worker.Indexed, stop: asyncio.Event) -> None:
        """Invoke `function` on its schedule until `stop` is set."""
        trigger = function.trigger()
        schedule = resolve_setting(str(trigger["schedule"]), self.environ)
        last: datetime | None = None
        if trigger.get("runOnStartup"):
            await self._tick(function, False, None, datetime.now(UTC))
        while not stop.is_set():
            due = next(CronSim(schedule, (last or datetime.now(UTC)).replace(microsecond=0)))
            wait = (due - datetime.now(UTC)).total_seconds()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 0))
            if stop.is_set():
                return
            late = (datetime.now(UTC) - due).total_seconds() > LATE
            await self._tick(function, late, last, due)
            last = due

    async def _tick(
        self, function: worker.Indexed, past_due: bool, last: datetime | None, due: datetime
    ) -> None:
        data, metadata = triggers.timer(past_due, last, due)
        try:
            await worker.invoke(function, {function.trigger()["name"]: data}, metadata)
        except Exception:
            log.exception("function %s raised", function.name)


def _is(function: worker.Indexed, kind: str) -> bool:
    return bool(function.trigger()["type"] == f"{kind}Trigger")


def _http_response(datum: Any) -> web.Response:
    if datum is None or datum.type != "http":
        body = b"" if datum is None else str(datum.value).encode()
        return web.Response(status=200, body=body)
    value = datum.value
    headers = {name: header.value for name, header in value["headers"].items()}
    return web.Response(status=int(value["status_code"].value), body=value["body"].value,
                        headers=headers)  # fmt: skip


def load(script: Path = ROOT / "function_app.py") -> tuple[list[worker.Indexed], str]:
    """The app's functions as the worker indexes them, and host.json's route prefix."""
    return worker.index(script), routes.route_prefix(script.parent / "host.json")


async def serve(
    environ: Mapping[str, str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
    published: Path | None = None,
    script: Path = ROOT / "function_app.py",
) -> None:
    """Serve the app in `script` until `stop` is set (forever without one)."""
    stop = stop or asyncio.Event()
    functions, prefix = load(script)
    local = Host(functions, environ, prefix=prefix, published=published)
    runner = web.AppRunner(local.application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    loaded = local.functions.values()
    tasks = [
        *(asyncio.create_task(local.pump_queue(f, stop)) for f in loaded if _is(f, "serviceBus")),
        *(asyncio.create_task(local.run_timer(f, stop)) for f in loaded if _is(f, "timer")),
    ]
    log.info("serving", extra={"url": f"http://{host}:{port}/{prefix}", "tasks": len(tasks)})
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--settings", type=Path, help="a local.settings.json to read Values from")
    parser.add_argument(
        "--published", type=Path, help="append the events output bindings publish to this file"
    )
    args = parser.parse_args()
    if args.settings:
        values = json.loads(args.settings.read_text())["Values"]
        os.environ.update({k: str(v) for k, v in values.items() if k not in os.environ})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(dict(os.environ), args.host, args.port, stop=stop, published=args.published)

    asyncio.run(run())


if __name__ == "__main__":
    main()
