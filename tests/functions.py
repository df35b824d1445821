"""function_app's functions called the way Azure calls them, for tests: indexed by the Python
worker's own code and every trigger payload decoded by azure-functions' own converters
(`devstack.worker`), from what the host sends for that trigger (`devstack.triggers`). No test
builds an `HttpRequest`, `ServiceBusMessage`, `EventHubEvent` or `TimerRequest` itself: the
library does, as it does in Azure, whichever version is installed."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack import triggers, worker

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def indexed() -> dict[str, worker.Indexed]:
    """function_app.py's functions, as the worker indexes them (once per process)."""
    return {function.name: function for function in worker.index(ROOT / "function_app.py")}


def _name(function: Any) -> str:
    """The function's name, from its name or from function_app's builder for it."""
    return function if isinstance(function, str) else function.build().get_function_name()


async def invoke(function: Any, payload: triggers.Payload) -> worker.Invocation:
    target = indexed()[_name(function)]
    data, metadata = payload
    return await worker.invoke(target, {target.trigger()["name"]: data}, metadata)


@dataclass(frozen=True)
class HttpCall:
    """An HTTP request as it reaches the host (route parameters already matched)."""

    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    route_params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)


async def http(function: Any, call: HttpCall) -> tuple[int, bytes, dict[str, str]]:
    """The status, body and headers the host would send back for `call`."""
    url = f"http://127.0.0.1:7071/api/{call.path.lstrip('/')}"
    payload = triggers.http(
        call.method, url, call.headers, call.body, call.route_params, call.query
    )
    returned = (await invoke(function, payload)).returned
    assert returned is not None, "an HTTP function answers"
    assert returned.type == "http", "an HTTP function answers HTTP"
    value = returned.value
    headers = {name.lower(): header.value for name, header in value["headers"].items()}
    return int(value["status_code"].value), bytes(value["body"].value), headers


async def service_bus(function: Any, body: bytes, **properties: Any) -> None:
    """One Service Bus message; `properties` as `devstack.triggers.service_bus` takes them."""
    await invoke(function, triggers.service_bus(body, **properties))


async def event_grid(function: Any, event: Mapping[str, Any]) -> list[str]:
    """One delivered event; what the function set on its `eventGrid` output bindings."""
    outputs = (await invoke(function, triggers.event_grid(event))).outputs
    return [str(datum.value) for datum in outputs.values()]


async def event_hubs(function: Any, *bodies: bytes | str) -> None:
    """One batch of Event Hubs events (cardinality many)."""
    await invoke(function, triggers.event_hubs_batch(bodies))


async def timer(function: Any, *, past_due: bool = False) -> None:
    """One timer tick."""
    await invoke(function, triggers.timer(past_due, None, datetime.now(UTC)))


def json_body(body: bytes) -> dict[str, Any]:
    return dict(json.loads(body or b"{}"))
