"""The local Functions host (devstack.functions_host) behaves as the Azure Functions host does for
what the app uses: route prefix from host.json, routes matched as ASP.NET Core matches them, the
Event Grid webhook contract, timers on their NCRONTAB schedule, the admin API feeding an Event
Hubs batch. Served in process over a probe app indexed by the worker's own code."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from devstack import functions_host, routes, worker

PROBE = """
from __future__ import annotations

import typing

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
seen: list[object] = []


@app.route(route="v1/things/{thing}/parts", methods=["GET"])
def parts(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        f"{req.method} {req.route_params['thing']} {req.params.get('q', '')}",
        status_code=201, headers={"X-Probe": "yes"},
    )


@app.route(route="v1/boom", methods=["POST"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("a failure the host hides")


@app.event_grid_output(arg_name="answer", connection="Out")
@app.event_grid_trigger(arg_name="event")
def grid(event: str, answer: func.Out[str]) -> None:
    seen.append(("grid", event))
    if "fail" in event:
        raise RuntimeError("retry me")
    answer.set('{"answered": true}')


@app.event_hub_message_trigger(
    arg_name="events", connection="Hub", event_hub_name="%HUB%", cardinality="many"
)
def hub(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006 - the worker needs it
    seen.append(("hub", [e.get_body().decode() for e in events]))


@app.timer_trigger(schedule="%SCHEDULE%", arg_name="timer", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    seen.append(("tick", timer.past_due))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[worker.Indexed], ModuleType]:
    directory = tmp_path_factory.mktemp("probe")
    script = directory / "probe_function_app.py"
    script.write_text(textwrap.dedent(PROBE))
    indexed = worker.index(script)  # imports it, as the worker does
    return indexed, sys.modules["probe_function_app"]


@dataclass
class Served:
    """The probe app on the local host: a client to it, the host, what the probe saw."""

    client: TestClient[Any, Any]
    host: functions_host.Host
    seen: list[Any]


@pytest.fixture
async def served(
    probe: tuple[list[worker.Indexed], ModuleType], tmp_path: Path
) -> AsyncIterator[Served]:
    indexed, module = probe
    module.seen.clear()
    environ = {"HUB": "audit", "SCHEDULE": "*/1 * * * * *"}
    host = functions_host.Host(
        indexed, environ, prefix="api", published=tmp_path / "published.jsonl"
    )
    async with TestClient(TestServer(host.application())) as client:
        yield Served(client, host, module.seen)


def webhook(function: str = "grid") -> str:
    return f"/runtime/webhooks/EventGrid?functionName={function}"


class TestRoutes:
    def test_the_prefix_comes_from_host_json(self, tmp_path: Path) -> None:
        """routePrefix as host.json sets it, "api" without one, "" for none."""
        config = tmp_path / "host.json"
        assert routes.route_prefix(config) == "api"
        config.write_text(json.dumps({"extensions": {"http": {"routePrefix": ""}}}))
        assert routes.route_prefix(config) == ""
        config.write_text(json.dumps({"extensions": {"http": {"routePrefix": "/writeback/"}}}))
        assert routes.route_prefix(config) == "writeback"
        assert routes.route_prefix(Path(functions_host.ROOT) / "host.json") == "api"

    def test_templates_match_as_the_host_matches(self) -> None:
        """Literal segments ignore case, parameters keep theirs; optional and catch-all
        parameters and the known constraints work; an unknown constraint is refused."""
        route = routes.compile_route("api", "v1/users/{user}/requests", ["GET"], None)
        assert route.match("/API/V1/Users/Alice%40Corp/Requests") == {"user": "Alice@Corp"}
        assert route.match("/api/v1/users/a%2540b/requests") == {"user": "a%40b"}  # once
        assert route.match("/api/v1/users/a%2Fb/requests") == {"user": "a%2Fb"}  # kept
        assert route.match("/api/v1/users/a/b/requests") is None
        optional = routes.compile_route("", "files/{name?}", [], None)
        assert optional.match("/files") == {}
        assert optional.match("/files/x") == {"name": "x"}
        assert routes.compile_route("api", "r/{*rest}", [], None).match("/api/r/a/b") == {
            "rest": "a/b"
        }
        typed = routes.compile_route("api", "n/{id:int}", [], None)
        assert typed.match("/api/n/12") == {"id": "12"}
        assert typed.match("/api/n/x") is None
        with pytest.raises(ValueError, match="regex"):
            routes.compile_route("api", "n/{id:regex}", [], None)


class TestHttp:
    async def test_a_route_answers_with_what_the_library_encodes(self, served: Served) -> None:
        """Status, headers and body come from the function's HttpResponse, encoded by the
        library; route parameters and the query string reach the function."""
        response = await served.client.get("/Api/V1/Things/Widget/Parts?q=1")
        assert response.status == 201
        assert response.headers["X-Probe"] == "yes"
        assert await response.text() == "GET Widget 1"

    async def test_what_the_host_refuses_is_404_and_a_raise_is_an_empty_500(
        self, served: Served
    ) -> None:
        """A method the function does not list and an unknown path are 404, as on the host;
        a function that raises gives a 500 without its text."""
        assert (await served.client.post("/api/v1/things/w/parts")).status == 404
        assert (await served.client.get("/api/v1/nothing")).status == 404
        assert (await served.client.get("/v1/things/w/parts")).status == 404  # no prefix
        failed = await served.client.post("/api/v1/boom")
        assert (failed.status, await failed.text()) == (500, "")


class TestEventGrid:
    async def test_a_notification_is_accepted_and_published(self, served: Served) -> None:
        """A delivery of two CloudEvents invokes the function once per event and answers 202;
        what the output binding set is published; one failing event makes it a 500."""
        events = [
            {"specversion": "1.0", "id": "1", "source": "/s", "type": "T", "data": {}},
            {"specversion": "1.0", "id": "2", "source": "/s", "type": "T", "data": {}},
        ]
        headers = {"aeg-event-type": "Notification"}
        response = await served.client.post(webhook(), json=events, headers=headers)
        assert response.status == 202
        seen = [json.loads(e)["id"] for kind, e in served.seen if kind == "grid"]
        assert sorted(seen) == ["1", "2"]
        host = served.host
        assert host.published is not None
        assert host.published.read_text().splitlines() == ['{"answered": true}'] * 2
        failing = {**events[0], "id": "fail"}
        assert (await served.client.post(webhook(), json=failing, headers=headers)).status == 500

    async def test_the_handshake_and_refusals(self, served: Served) -> None:
        """Validation answers the code (200); Unsubscribe 202; no aeg-event-type 400; a
        function of another trigger type or another case 404."""
        validation = [{"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                       "data": {"validationCode": "c-1"}}]  # fmt: skip
        handshake = {"aeg-event-type": "SubscriptionValidation"}
        answered = await served.client.post(webhook(), json=validation, headers=handshake)
        assert (answered.status, await answered.json()) == (200, {"validationResponse": "c-1"})
        notification = {"aeg-event-type": "Notification"}
        assert (await served.client.post(webhook(), json=[], headers=notification)).status == 202
        unsubscribe = {"aeg-event-type": "Unsubscribe"}
        assert (
            await served.client.post(webhook(), json=validation, headers=unsubscribe)
        ).status == 202
        assert (await served.client.post(webhook(), json=validation)).status == 400
        assert (
            await served.client.post(webhook("hub"), json=validation, headers=handshake)
        ).status == 404
        assert (
            await served.client.post(webhook("GRID"), json=validation, headers=handshake)
        ).status == 404


class TestTimerAndAdmin:
    async def test_a_timer_runs_on_its_schedule(self, served: Served) -> None:
        """A six-field NCRONTAB schedule from an app setting (every second here) invokes the
        function on time, not past due."""
        host = served.host
        function = host.functions["tick"]
        stop = asyncio.Event()
        task = asyncio.create_task(host.run_timer(function, stop))
        deadline = time.monotonic() + 10
        try:
            while len([s for s in served.seen if s[0] == "tick"]) < 2:
                assert time.monotonic() < deadline, "the timer did not run twice"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
        assert ("tick", False) in served.seen

    async def test_the_admin_api_feeds_an_event_hubs_batch(self, served: Served) -> None:
        """POST /admin/functions/<name> with a list of bodies is one batch (202); a string is
        one event; a timer runs now; anything else is 400 and an unknown function 404."""
        response = await served.client.post(
            "/admin/functions/hub", json={"input": ["a", '{"b": 1}']}
        )
        assert response.status == 202
        assert (
            await (await served.client.post("/admin/functions/hub", json={"input": "c"})).text()
            == ""
        )
        assert [s for s in served.seen if s[0] == "hub"] == [
            ("hub", ["a", '{"b": 1}']), ("hub", ["c"]),
        ]  # fmt: skip
        assert (await served.client.post("/admin/functions/tick", json={})).status == 202
        assert (await served.client.post("/admin/functions/hub", json={"input": 5})).status == 400
        assert (
            await served.client.post("/admin/functions/grid", json={"input": "x"})
        ).status == 400
        assert (await served.client.post("/admin/functions/none", json={})).status == 404

    def test_a_trigger_whose_setting_is_missing_is_not_loaded(
        self, served: Served, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A `%SETTING%` that does not resolve keeps that function from loading, named in the
        log, and leaves the others loadable."""
        lacking = functions_host.Host(list(served.host.functions.values()), {"HUB": "audit"})
        assert "tick" not in lacking.functions
        assert {"hub", "grid", "parts"} <= set(lacking.functions)
        assert "SCHEDULE" in caplog.text
