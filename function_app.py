"""The Azure Functions entry point (Python v2 programming model): routes and triggers only.

Every handler lives in `writeback.cloud.http`, which authenticates, validates and calls the
writeback service; nothing here connects to anything, or reads a setting, at import time: a
missing or unresolved setting must never stop the worker from indexing the app (the host would
then serve nothing at all); the handlers answer 503 and name the setting to operators instead.
The routes are anonymous at the host because the application authenticates every call itself
(Entra ID bearer tokens with app roles, or an API key in `x-functions-key`), identically in
Azure and on the local host.

The service (`writeback.cloud.http` and all it imports: the Azure SDKs, aiohttp, JOSE) is
imported at the first invocation, not when the worker indexes the app: indexing needs only the
decorators below, and the host waits for it before it serves anything (the cold start callers
feel first); the first invocation builds the service and its connections anyway.

The Python worker checks every annotation when it indexes the app (`devstack/worker.py` runs its
code in the tests): only classes and `typing` generics pass, so a batch is `typing.List[...]`,
never the built-in `list[...]`, which makes the worker refuse the whole app.
"""

from __future__ import annotations

import typing
from types import ModuleType

import azure.functions as func

from writeback.protocol import Operation
from writeback.transport import HEARTBEATS_QUEUE

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _service() -> ModuleType:
    """writeback.cloud.http, imported on first use (see the module doc); then a dict lookup."""
    from writeback.cloud import http  # noqa: PLC0415 - deferred on purpose: the cold start

    return http


@app.route(route="v1/passwords/reset", methods=["POST"])
async def reset_password(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().submit(req, Operation.RESET)


@app.route(route="v1/passwords/change", methods=["POST"])
async def change_password(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().submit(req, Operation.CHANGE)


@app.route(route="v1/accounts/unlock", methods=["POST"])
async def unlock_account(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().submit(req, Operation.UNLOCK)


@app.route(route="v1/passwords/expire", methods=["POST"])
async def expire_password(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().submit(req, Operation.EXPIRE)


@app.route(route="v1/requests/{request_id}", methods=["GET"])
async def request_status(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().request_status(req)


@app.route(route="v1/users/{user}/requests", methods=["GET"])
async def user_history(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().user_history(req)


@app.route(route="v1/health", methods=["GET"])
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().health(req)


@app.route(route="v1/domains/{domain}/keys", methods=["GET"])
async def domain_keys(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().domain_keys(req)


@app.route(route="v1/domains/{domain}/policy", methods=["GET"])
async def domain_policy(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().domain_policy(req)


@app.route(route="v1/users/{user}/policy", methods=["GET"])
async def user_policy(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().user_policy(req)


# The self-service and helpdesk pages, their static files and their sign-in config.
@app.route(route="pages/{*path}", methods=["GET"])
async def pages(req: func.HttpRequest) -> func.HttpResponse:
    return await _service().page(req)


@app.service_bus_queue_trigger(
    arg_name="message", connection="ServiceBusConnection", queue_name=HEARTBEATS_QUEUE
)
async def record_heartbeat(message: func.ServiceBusMessage) -> None:
    await _service().heartbeat(message)


# Writeback requests as CloudEvents (docs/events.md), or in the Event Grid schema. The event comes
# as its JSON text: azure-functions before 1.25 (which a worker may bundle) decodes a CloudEvent
# into an EventGridEvent without its type and source, while the text is the same in every version.
@app.event_grid_output(arg_name="completed", connection="WritebackEvents")
@app.event_grid_trigger(arg_name="event")
async def writeback_event(event: str, completed: func.Out[str]) -> None:
    await _service().writeback_event(event, completed)


@app.event_hub_message_trigger(
    arg_name="events",
    connection="EntraAuditHub",
    event_hub_name="%WRITEBACK_AUDIT_HUB%",
    consumer_group="%WRITEBACK_AUDIT_CONSUMER_GROUP%",
    cardinality="many",
)
async def entra_audit(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006 - see above
    await _service().entra_audit(events)


# Outcomes left on the reply session of an instance that is gone (writeback.cloud.sweep). The
# host runs a timer on one instance at a time; the schedule is an app setting (NCRONTAB).
@app.timer_trigger(schedule="%WRITEBACK_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False)
async def sweep_replies(timer: func.TimerRequest) -> None:
    await _service().sweep_replies(timer)
