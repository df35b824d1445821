"""function_app.py on the real Python worker: indexed by the worker's own code, every trigger
decoded by azure-functions' own converters, under the pinned library and under the oldest one a
supported worker bundles (a worker on Python 3.11/3.12 loads its own copy of the library unless
dependency isolation says otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import pytest
from azure_functions_runtime.bindings import meta

from devstack import triggers, worker
from tests import functions
from tests.unit.cloud_stack import API_KEY, cloud_stack

ROOT = Path(__file__).resolve().parents[2]
OLDEST_LIBRARY = Path(sys.prefix) / "oldest-library"  # the Makefile installs it there
EXPECT_LIBRARY = "WRITEBACK_EXPECT_AZURE_FUNCTIONS"
# The trigger tests, rerun under the oldest library: every trigger the app has goes through them.
TRIGGER_TESTS = [
    "tests/unit/test_worker.py", "tests/unit/test_api.py", "tests/unit/test_events.py",
    "tests/unit/test_drift.py", "tests/unit/test_side_by_side.py", "tests/unit/test_sweep.py",
    "tests/unit/test_heartbeats.py",
]  # fmt: skip

APP = """
from __future__ import annotations

import typing

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.event_hub_message_trigger(
    arg_name="events", connection="Hub", event_hub_name="hub", cardinality="many"
)
async def batch(events: {annotation}) -> None:
    return None
"""


def write_app(directory: Path, name: str, annotation: str) -> Path:
    script = directory / f"{name}.py"
    script.write_text(textwrap.dedent(APP).replace("{annotation}", annotation))
    return script


class TestIndexing:
    def test_the_worker_indexes_every_function(self) -> None:
        """The worker's metadata request succeeds for function_app.py: all 15 functions, each
        with the trigger type its docs name."""
        kinds = {name: f.trigger()["type"] for name, f in functions.indexed().items()}
        assert len(kinds) == 15
        assert sorted(set(kinds.values())) == [
            "eventGridTrigger", "eventHubTrigger", "httpTrigger", "serviceBusTrigger",
            "timerTrigger",
        ]  # fmt: skip
        assert kinds["entra_audit"] == "eventHubTrigger"

    def test_a_built_in_generic_annotation_fails_the_whole_app(self, tmp_path: Path) -> None:
        """`list[func.EventHubEvent]` (what function_app.py once said) makes the worker refuse the
        app, naming the function and the parameter; `typing.List[...]` is accepted."""
        with pytest.raises(worker.FunctionLoadError, match=r"batch.*events.*non-type annotation"):
            worker.index(write_app(tmp_path, "builtin_generic_app", "list[func.EventHubEvent]"))
        (indexed,) = worker.index(
            write_app(tmp_path, "typing_generic_app", "typing.List[func.EventHubEvent]")
        )
        assert indexed.info.input_types["events"].binding_name == "eventHubTrigger"

    def test_the_app_does_not_read_settings_at_import(self) -> None:
        """Importing function_app.py with an unresolved Key Vault reference among the settings
        succeeds: one bad setting must not unload every function (the handlers answer 503)."""
        environ = {
            **os.environ, "WRITEBACK_API_KEYS": "@Microsoft.KeyVault(VaultName=v;SecretName=s)",
            "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        count = "import function_app; print(len(function_app.app.get_functions()))"
        result = subprocess.run(
            [sys.executable, "-c", count],
            cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (result.returncode, result.stdout.strip()) == (0, "15"), result.stderr


def decode(function: str, payload: triggers.Payload) -> object:
    """What function_app's `function` receives for `payload`: its trigger parameter decoded by
    the worker for the binding and type the worker indexed."""
    indexed = functions.indexed()[function]
    name = indexed.trigger()["name"]
    declared = indexed.info.input_types[name]
    data, metadata = payload
    return meta.from_incoming_proto(
        declared.binding_name, worker._ParameterBinding(name, data), trigger_metadata=metadata,
        pytype=declared.pytype, function_name=function,
    )  # fmt: skip


class TestDecoding:
    async def test_an_http_request_reaches_the_function_through_the_library(
        self, tmp_path: Path
    ) -> None:
        """The host's RpcHttp becomes the library's HttpRequest: method, headers (any case) and
        route parameters arrive; the HttpResponse is encoded back with status and type."""
        async with cloud_stack(tmp_path):
            status, body, headers = await functions.http(
                "request_status",
                functions.HttpCall("GET", "v1/requests/bad!", route_params={"request_id": "bad!"},
                                   headers={"X-Functions-Key": API_KEY}),
            )  # fmt: skip
        assert (status, functions.json_body(body)["field"]) == (400, "requestId")
        assert headers["content-type"] == "application/json"

    def test_each_trigger_payload_decodes_to_the_type_the_app_declares(self) -> None:
        """Service Bus, Event Hubs (a batch), timer and Event Grid (both schemas) payloads, as
        the host sends them, decode through the library to what the handlers read."""
        message = decode(
            "record_heartbeat",
            triggers.service_bus(b'{"beat": 1}', message_id="m-1", delivery_count=2),
        )
        assert isinstance(message, func.ServiceBusMessage)
        assert (message.get_body(), message.message_id, message.delivery_count) == (
            b'{"beat": 1}', "m-1", 2,
        )  # fmt: skip
        batch = decode("entra_audit", triggers.event_hubs_batch([b'{"records": []}', b"\xff"]))
        assert isinstance(batch, list)
        assert [event.get_body() for event in batch] == [b'{"records": []}', "\ufffd".encode()]
        tick = decode("sweep_replies", triggers.timer(True, None, datetime.now(UTC)))
        assert isinstance(tick, func.TimerRequest)
        assert tick.past_due is True
        for event in (
            {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "T", "data": {"a": 1}},
            {"id": "e-2", "topic": "/t", "eventType": "T", "data": {"a": 1}, "dataVersion": "1"},
        ):
            text = decode("writeback_event", triggers.event_grid(event))
            assert isinstance(text, str)
            assert json.loads(text) == event


@pytest.mark.skipif(os.environ.get(EXPECT_LIBRARY) is None, reason="only in the rerun below")
def test_the_rerun_uses_the_library_it_names() -> None:
    """Inside the rerun, azure.functions is the oldest library, not the pinned one."""
    assert func.__version__ == os.environ[EXPECT_LIBRARY]


@pytest.mark.skipif(os.environ.get(EXPECT_LIBRARY) is not None, reason="no rerun in a rerun")
def test_every_trigger_decodes_under_the_oldest_bundled_library() -> None:
    """The trigger tests pass again with azure-functions 1.24.0 (the oldest a supported worker
    bundles) in place of the pinned one."""
    version = OLDEST_LIBRARY / "azure" / "functions" / "__init__.py"
    assert version.exists(), f"{OLDEST_LIBRARY} is missing: run `make deps`"
    environ = {
        **os.environ, "PYTHONPATH": os.pathsep.join([str(OLDEST_LIBRARY), str(ROOT)]),
        EXPECT_LIBRARY: "1.24.0",
    }  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *TRIGGER_TESTS],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in tail
    assert " failed" not in tail
    assert "only in the rerun" not in result.stdout  # the version check itself ran
