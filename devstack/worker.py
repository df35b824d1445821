"""The Python worker's half of the local Functions host: function_app.py indexed and invoked by
the worker's own code, so the app meets here exactly the checks and conversions it meets in Azure.

In Azure the Functions host starts Microsoft's Python language worker and talks to it over gRPC.
The worker imports function_app.py and indexes it (`loader.index_function_app`, then
`loader.process_indexed_function`, whose `Registry.add_indexed_function` checks every
parameter's annotation against its binding: one function it refuses fails the metadata request,
and the host then serves no function at all). On each invocation it turns the host's `TypedData`
into Python objects through azure-functions' own converters (`bindings.meta.from_incoming_proto`
→ the library's `InConverter.decode`), gives `Out` objects to output bindings, calls the
function, and encodes what it returned and set (`bindings.meta.get_datum` → `encode`).
This module calls those functions of the worker package Microsoft publishes on PyPI,
`azure-functions-runtime` (the worker Azure runs for Python 3.13 and later; its indexing and
binding code is the same as the 3.11/3.12 worker's, which is not published), installed by the
Makefile with `--ignore-requires-python`.

Stand-ins: the gRPC messages of the host-worker protocol (`FunctionRpc.proto`) these functions
read or build: `TypedData` (a `oneof data`), `RpcHttp`, `ParameterBinding`, `BindingInfo`'s
enums and `RpcFunctionMetadata`, as small classes with the proto's field names and
`WhichOneof`. What the host puts into them for each trigger is in `devstack.triggers`.
Not emulated: gRPC and the worker's process model (threads, `FUNCTIONS_WORKER_PROCESS_COUNT`),
the `context` parameter, HTTP streaming (http_v2), SDK-type (deferred) bindings, shared-memory
transfer, retry policies, OpenTelemetry set-up by the worker.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from azure_functions_runtime import loader
from azure_functions_runtime.bindings import meta
from azure_functions_runtime.bindings.out import Out
from azure_functions_runtime.functions import FunctionInfo, FunctionLoadError, Registry

__all__ = [
    "FunctionLoadError",
    "Indexed",
    "Invocation",
    "RpcHttp",
    "TypedData",
    "collection",
    "index",
    "invoke",
]


class _Message:
    """A proto3 message with one `oneof`: `kind` names the field that is set."""

    kind: str | None
    value: Any

    def WhichOneof(self, group: str) -> str | None:  # noqa: N802 - the protobuf method's name
        return self.kind

    def __getattr__(self, name: str) -> Any:
        if name == self.kind:
            return self.value
        raise AttributeError(name)


@dataclass(frozen=True)
class TypedData(_Message):
    """FunctionRpc.proto `TypedData`: `kind` is the field of its `oneof data` that is set
    (string, json, bytes, http, collection_string, collection_bytes, collection_sint64; the
    worker decodes no other), or None."""

    kind: str | None
    value: Any = None


@dataclass(frozen=True)
class RpcHttp:
    """FunctionRpc.proto `RpcHttp`, as the host fills it for a worker that announces
    RawHttpBodyBytes and RpcHttpBodyOnly (the Python worker does): the body as bytes."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: TypedData
    params: Mapping[str, str] = field(default_factory=dict)  # route parameters
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _ParameterBinding:
    """FunctionRpc.proto `ParameterBinding`: a name and its `oneof rpc_data` (here always data)."""

    name: str
    data: TypedData

    def WhichOneof(self, group: str) -> str:  # noqa: N802 - the protobuf method's name
        return "data"


def collection(kind: str, values: list[Any]) -> TypedData:
    """A `collection_string` / `collection_bytes` / `collection_sint64` TypedData."""
    field_name = kind.removeprefix("collection_")
    return TypedData(kind, SimpleNamespace(**{field_name: list(values)}))


class _BindingInfo:
    """FunctionRpc.proto `BindingInfo`: its Direction and DataType enums, and the message."""

    in_, out, inout = 0, 1, 2
    undefined, string, binary, stream = 0, 1, 2, 3

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


PROTOS = SimpleNamespace(
    BindingInfo=_BindingInfo,
    RpcFunctionMetadata=SimpleNamespace,
    RpcRetryOptions=SimpleNamespace,
)


@dataclass(frozen=True)
class Indexed:
    """One function as the worker reports it to the host: its `FunctionInfo` and raw bindings."""

    name: str
    info: FunctionInfo
    bindings: tuple[dict[str, Any], ...]
    function_json: dict[str, Any]  # what the library declares: scriptFile and bindings

    def trigger(self) -> dict[str, Any]:
        return next(b for b in self.bindings if str(b.get("type", "")).endswith("Trigger"))


@dataclass(frozen=True)
class Invocation:
    """What one invocation produced, encoded by the library as the worker sends it back."""

    returned: Any  # the worker's Datum for `$return`, or None
    outputs: dict[str, Any]  # output binding name -> Datum (only the ones the function set)


def index(script: Path) -> list[Indexed]:
    """Index `script` (function_app.py) exactly as the worker's metadata request does. Raises
    `FunctionLoadError` (the worker's) when the worker would refuse the app."""
    directory = str(script.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    meta.load_binding_registry()  # the worker's start-up: the library's converters
    registry = Registry()
    declared = loader.index_function_app(str(script))
    metadata, _ = loader.process_indexed_function(PROTOS, registry, declared, directory)
    return [
        Indexed(
            name=item.name,
            info=registry.get_function(item.function_id),
            bindings=tuple(json.loads(raw) for raw in item.raw_bindings),
            function_json=json.loads(function.get_function_json()),
        )
        for item, function in zip(metadata, declared, strict=True)
    ]


async def invoke(
    function: Indexed,
    inputs: Mapping[str, TypedData],
    trigger_metadata: Mapping[str, TypedData] | None = None,
) -> Invocation:
    """Invoke `function` as the worker's invocation request does: decode each input through the
    library's converter for its binding, hand `Out` objects to output bindings, call, encode."""
    info = function.info
    arguments: dict[str, Any] = {}
    for name, data in inputs.items():
        declared = info.input_types[name]
        arguments[name] = meta.from_incoming_proto(
            declared.binding_name,
            _ParameterBinding(name, data),
            trigger_metadata=dict(trigger_metadata or {})
            if meta.is_trigger_binding(declared.binding_name)
            else None,
            pytype=declared.pytype,
            function_name=info.name,
            is_deferred_binding=declared.deferred_bindings_enabled,
        )
    for name in info.output_types:
        arguments[name] = Out()
    if info.is_async:
        result = await info.func(**arguments)
    else:
        call = functools.partial(info.func, **arguments)
        result = await asyncio.get_running_loop().run_in_executor(None, call)
    if inspect.isawaitable(result):  # pragma: no cover - the worker awaits nothing more either
        raise TypeError(f"function {info.name} returned an awaitable")
    if result is not None and not info.has_return:
        raise RuntimeError(f"function {info.name} without a $return binding returned a value")
    outputs = {
        name: meta.get_datum(declared.binding_name, arguments[name].get(), declared.pytype)
        for name, declared in info.output_types.items()
        if arguments[name].get() is not None
    }
    returned = None
    if info.return_type is not None:
        returned = meta.get_datum(info.return_type.binding_name, result, info.return_type.pytype)
    return Invocation(returned, outputs)
