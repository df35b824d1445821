"""A local host for function_app.py: its own registered functions, served without Core Tools.

The Azure Functions host cannot be installed here, so this serves what `app.get_functions()`
declares, the way the host would: each `httpTrigger` binding on `/api/<route>` (with its
methods and route parameters, as `azure.functions.HttpRequest`), and each `serviceBusTrigger`
binding as a receiver on its queue (connection string from the setting the binding names; the
message completed when the function returns, abandoned when it raises, as with
autoCompleteMessages), and each `eventGridTrigger` on the host's webhook,
`POST /runtime/webhooks/eventgrid?functionName=<name>`, as Event Grid delivers: CloudEvents 1.0
(one event, or a batch) or the Event Grid schema (an array), with the subscription validation
handshake of both; 200 when the function returns, 500 when it raises (Event Grid retries). What an
`eventGrid` output binding sets is "published" as one JSON line to the file given as `published`
(else logged). The handlers are function_app.py's own: nothing here knows what they do.
Not emulated: the host's key checks (the app authenticates itself; the webhook's system key is
not checked), host.json's concurrency and retry options, other binding types (Event Hubs: there is
no local broker for it), scaling. `func start` remains the way with Core Tools.
Run `python -m devstack.functions_host` (settings from the environment) or use `serve()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

log = logging.getLogger("devstack.functions_host")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7071


def load_app(module: str = "function_app") -> func.FunctionApp:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    app = importlib.import_module(module).app
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{module}.app is not a FunctionApp")
    return app


def bindings(function: Any) -> list[dict[str, Any]]:
    return list(json.loads(function.get_function_json())["bindings"])


async def call(function: Any, argument: object) -> Any:
    result = function.get_user_function()(argument)
    return await result if inspect.isawaitable(result) else result


def http_routes(functions: list[Any], published: Path | None = None) -> web.Application:
    """An aiohttp application answering every HTTP-triggered function of `functions`, and the
    Event Grid webhook for every Event Grid-triggered one."""
    web_app = web.Application(client_max_size=1024 * 1024)
    grid = {
        function.get_function_name().lower(): function
        for function in functions
        if any(b["type"] == "eventGridTrigger" for b in bindings(function))
    }
    if grid:
        handler = _event_grid_handler(grid, published)
        for path in ("/runtime/webhooks/eventgrid", "/runtime/webhooks/EventGrid"):
            web_app.router.add_route("POST", path, handler)
            web_app.router.add_route("OPTIONS", path, _cloudevents_validation)
    for function in functions:
        for binding in bindings(function):
            if binding["type"] != "httpTrigger":
                continue
            route = "/api/" + binding.get("route", function.get_function_name()).lstrip("/")
            for method in binding.get("methods") or ["GET", "POST"]:
                web_app.router.add_route(method.upper(), route, _http_handler(function))
    return web_app


def _http_handler(function: Any) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        http_request = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            params=dict(request.query),
            route_params=dict(request.match_info),
            body=await request.read(),
        )
        try:
            response = await call(function, http_request)
        except Exception:
            log.exception("function %s raised", function.get_function_name())
            return web.Response(status=500)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
        return web.Response(
            status=response.status_code,
            body=response.get_body(),
            headers=headers,
            content_type=response.mimetype or "text/plain",
            charset=response.charset or None,
        )

    return handle


VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"


async def _cloudevents_validation(request: web.Request) -> web.StreamResponse:
    """The CloudEvents webhook validation (abuse protection): allow the asking origin."""
    origin = request.headers.get("WebHook-Request-Origin", "")
    return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin or "*"})


def _event_grid_handler(grid: Mapping[str, Any], published: Path | None) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        function = grid.get(request.query.get("functionName", "").lower())
        if function is None:
            return web.json_response({"error": "no Event Grid function of that name"}, status=404)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        items = body if isinstance(body, list) else [body]
        if not items or not all(isinstance(item, dict) for item in items):
            return web.json_response({"error": "not an event or a list of events"}, status=400)
        for item in items:
            if item.get("eventType") == VALIDATION:
                code = (item.get("data") or {}).get("validationCode")
                return web.json_response({"validationResponse": code})
        for item in items:  # one invocation per event, as the host makes them
            try:
                await _invoke_event_grid(function, trigger_event(item), published)
            except Exception:
                log.exception("function %s raised", function.get_function_name())
                return web.Response(status=500)
        return web.Response(status=200)

    return handle


def trigger_event(item: dict[str, Any]) -> Any:
    """The `func.CloudEvent` (CloudEvents 1.0) or `func.EventGridEvent` the host makes of one
    delivered event."""
    if "specversion" in item:
        known = {"id", "source", "type", "specversion", "data", "time", "subject",
                 "datacontenttype", "dataschema"}  # fmt: skip
        return func.CloudEvent(
            id=str(item.get("id")), source=str(item.get("source")), type=str(item.get("type")),
            specversion=str(item["specversion"]), data=item.get("data"),
            subject=item.get("subject"), datacontenttype=item.get("datacontenttype"),
            **{key: value for key, value in item.items() if key not in known},
        )  # fmt: skip
    return func.EventGridEvent(
        id=str(item.get("id")), data=item.get("data") or {}, topic=str(item.get("topic", "")),
        subject=str(item.get("subject", "")), event_type=str(item.get("eventType")),
        event_time=None, data_version=str(item.get("dataVersion", "")),
    )  # fmt: skip


class OutputBinding(func.Out[str]):
    """An `eventGrid` output binding: what the function sets is published after it returns."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def set(self, val: str) -> None:
        self.values.append(val)

    def get(self) -> str:
        return self.values[-1]


async def _invoke_event_grid(function: Any, event: Any, published: Path | None) -> None:
    arguments: dict[str, Any] = {}
    outputs: list[OutputBinding] = []
    for binding in bindings(function):
        if binding["type"] == "eventGridTrigger":
            arguments[binding["name"]] = event
        elif binding["type"] == "eventGrid" and binding["direction"] == "OUT":
            outputs.append(OutputBinding())
            arguments[binding["name"]] = outputs[-1]
    result = function.get_user_function()(**arguments)
    if inspect.isawaitable(result):
        await result
    for value in (v for output in outputs for v in output.values):
        if published is None:
            log.info("event published: %s", value)
        else:
            with published.open("a", encoding="utf-8") as sink:
                sink.write(value.replace("\n", " ") + "\n")


async def pump_queue(
    function: Any, binding: Mapping[str, Any], environ: Mapping[str, str], stop: asyncio.Event
) -> None:
    """Deliver the binding's queue to the function until `stop` is set."""
    connection = environ.get(str(binding["connection"]))
    if not connection:
        raise RuntimeError(f"setting {binding['connection']} (a connection string) is not set")
    queue = str(binding["queueName"])
    async with ServiceBusClient.from_connection_string(connection) as client:
        while not stop.is_set():
            try:
                async with client.get_queue_receiver(queue, max_wait_time=1) as receiver:
                    while not stop.is_set():
                        for received in await receiver.receive_messages(10, max_wait_time=1):
                            try:
                                await call(function, _message(received))
                            except Exception:
                                log.exception("function %s raised", function.get_function_name())
                                await receiver.abandon_message(received)
                            else:
                                await receiver.complete_message(received)
            except Exception as exc:  # the broker went away: reconnect, as the host does
                log.warning("queue %s: %s; reconnecting", queue, type(exc).__name__)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)


def _message(received: Any) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=b"".join(received.body),
        message_id=str(received.message_id),
        session_id=received.session_id,
        reply_to=received.reply_to,
        reply_to_session_id=received.reply_to_session_id,
        content_type=received.content_type,
        correlation_id=received.correlation_id,
        delivery_count=received.delivery_count,
        enqueued_time_utc=received.enqueued_time_utc,
        sequence_number=received.sequence_number,
        application_properties={
            str(k): v for k, v in (received.application_properties or {}).items()
        },
        user_properties={},
    )


async def serve(
    app: func.FunctionApp,
    environ: Mapping[str, str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
    published: Path | None = None,
) -> None:
    """Serve `app` until `stop` is set (forever without one)."""
    stop = stop or asyncio.Event()
    functions = app.get_functions()  # indexes the app; a second call would index it twice
    runner = web.AppRunner(http_routes(functions, published), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    pumps = [
        asyncio.create_task(pump_queue(function, binding, environ, stop))
        for function in functions
        for binding in bindings(function)
        if binding["type"] == "serviceBusTrigger"
    ]
    log.info("serving", extra={"url": f"http://{host}:{port}/api", "queues": len(pumps)})
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        await asyncio.gather(*pumps, return_exceptions=True)
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
    environ = dict(os.environ)
    if args.settings:
        values = json.loads(args.settings.read_text())["Values"]
        environ = {**values, **environ}
        os.environ.update({k: str(v) for k, v in values.items() if k not in os.environ})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(load_app(), environ, args.host, args.port, stop=stop, published=args.published)

    asyncio.run(run())


if __name__ == "__main__":
    main()
