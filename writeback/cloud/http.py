"""The writeback API over Azure Functions' HTTP, Service Bus, Event Grid and Event Hubs bindings:
the only module under `writeback/` that imports `azure.functions`.

Each handler authenticates the caller, checks the app role its operation needs (and that a
signed-in user names their own account, `auth.delegation`), reads the body
strictly, calls one method of `WritebackService` and maps the result to a status and a JSON body:
200 applied, 422 rejected, 503 agent.unavailable / transport.unavailable, 504 agent.timeout
(pending: poll the request id), 502 any other failure, 400 bad input (naming the field), 401/403
for authentication and authorisation, 404 an unknown request id. An exception nobody expected
becomes a 500 with only a correlation id: its text could hold anything, so it goes to the log.
The service is built on first use from the app settings (`bootstrap.build`), never at import.
The event triggers (`writeback_event`, `entra_audit`) only adapt: `writeback.cloud.events` and
`writeback.cloud.drift` decide, and raise only what a later delivery can get past. The timer
(`sweep`) runs `writeback.cloud.sweep`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import azure.functions as func

from writeback import tracing
from writeback.cloud import auth, drift, events, pages, sweep, telemetry
from writeback.cloud.bootstrap import Cloud, build
from writeback.cloud.service import Answer
from writeback.cloud.submissions import REQUEST_ID, InvalidInput, parse, read_body, user_reference
from writeback.cloud.telemetry import trace_id
from writeback.errors import ConfigurationError, WritebackError
from writeback.protocol import Operation, Reason
from writeback.protocol.messages import TRACEPARENT
from writeback.tracing import Stage

log = logging.getLogger(__name__)

_cloud: Cloud | None = None
_stream: tuple[Cloud, drift.AuditStream] | None = None

JSON = "application/json"
HOURS = re.compile(r"[0-9]{1,4}")  # ASCII digits only: str.isdigit also takes "²", int() does not
MISCONFIGURED = "service.misconfigured"
# Callers learn only that the service is not configured; the setting and what is wrong with it
# go to the log and to an operator who asks /api/v1/health.
NOT_CONFIGURED = (
    "The writeback service is not configured correctly. An administrator can see why in the "
    "service's health report or its log."
)
_STATUS_OF_REASON = {
    Reason.AGENT_UNAVAILABLE.value: 503,
    Reason.TRANSPORT_UNAVAILABLE.value: 503,
    Reason.AGENT_TIMEOUT.value: 504,
    Reason.ACCOUNT_THROTTLED.value: 429,
}


async def cloud() -> Cloud:
    """The service and its adapters, built once per worker from the app settings."""
    global _cloud  # noqa: PLW0603 - one composition root per worker process, built lazily
    if _cloud is None:
        _cloud = await build(os.environ)
    return _cloud


def use(instance: Cloud | None) -> None:
    """Serve with `instance` (the local host and the tests build their own), or rebuild."""
    global _cloud  # noqa: PLW0603 - see cloud()
    _cloud = instance


def respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype=JSON, headers=headers or {}
    )


def error(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    challenge: str | None = None,
) -> Any:
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    headers = {"WWW-Authenticate": challenge or "Bearer"} if status == 401 else None
    return respond(status, body, headers)


def answered(answer: Answer) -> Any:
    body = {
        "requestId": answer.request_id,
        "state": answer.state,
        "status": answer.status or "pending",
        "reason": answer.reason,
        "message": answer.message,
        "durationMs": answer.duration_ms,
    }
    if answer.state == "pending":
        return respond(504, body, {"Location": f"/api/v1/requests/{answer.request_id}"})
    if answer.status == "applied":
        return respond(200, body)
    if answer.status == "rejected":
        return respond(_STATUS_OF_REASON.get(answer.reason or "", 422), body)
    return respond(_STATUS_OF_REASON.get(answer.reason or "", 502), body)


Handler = Callable[[Cloud, auth.Caller], Awaitable[Any]]


async def guarded(request: Any, act: Handler) -> Any:
    """Authenticate, authorise and run `act`, mapping every expected failure to its status."""
    try:
        instance = await cloud()
    except ConfigurationError as exc:
        log.error("not configured", extra={"setting": exc.setting, "error": exc.problem})
        return error(503, MISCONFIGURED, NOT_CONFIGURED)
    try:
        with tracing.stage(Stage.AUTHENTICATE):
            caller = await instance.authenticator.authenticate(dict(request.headers))
        return await act(instance, caller)
    except auth.AuthError as exc:
        return error(exc.status, exc.reason, exc.problem, challenge=exc.challenge)
    except InvalidInput as exc:
        status = 409 if exc.reason == "request.duplicate" else 400
        status = 404 if exc.reason == "domain.unknown" else status
        return error(status, exc.reason, exc.problem, exc.field)
    except WritebackError as exc:
        # An adapter failed (keys, tables): nothing reached a relay; the text is ours and safe.
        log.error("request failed", extra={"error": str(exc), "kind": type(exc).__name__})
        return error(503, "service.unavailable", "The writeback service is not available now.")
    except Exception:
        incident = secrets.token_hex(8)
        log.exception("unexpected failure", extra={"incident": incident})
        return error(500, "internal", f"Unexpected failure (incident {incident}).")


def _traceparent(request: Any) -> str | None:
    value = request.headers.get("traceparent")
    return value if isinstance(value, str) and TRACEPARENT.fullmatch(value) else None


async def submit(request: Any, operation: Operation) -> Any:
    """POST /api/v1/passwords/reset | /change | /expire, /api/v1/accounts/unlock."""

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        with tracing.stage(Stage.VALIDATE):
            submission = parse(operation, read_body(request.get_body()))
            instance.authenticator.authorize(
                caller, auth.required_role(operation, submission.initiator)
            )
            instance.authenticator.authorize_target(caller, operation, submission.user)
        answer = await instance.service.submit(
            submission, caller, trace_id=trace_id(traceparent), traceparent=traceparent
        )
        instance.telemetry.completed(operation.value, answer)
        return answered(answer)

    # The request's span covers authentication too: every stage is in the caller's trace.
    with telemetry.request(operation.value, _traceparent(request)) as traceparent:
        return await guarded(request, act)


async def request_status(request: Any) -> Any:
    """GET /api/v1/requests/{request_id}."""

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        instance.authenticator.authorize(caller, auth.Role.READ)
        request_id = request.route_params.get("request_id", "")
        if not REQUEST_ID.fullmatch(request_id):
            raise InvalidInput("requestId", "is not a request id")
        answer = await instance.service.status(request_id)
        if answer is None:
            return error(404, "request.unknown", "No request with this id.", "requestId")
        response = answered(answer)
        if answer.state == "pending":
            response = respond(200, json.loads(response.get_body()))
        return response

    return await guarded(request, act)


async def health(request: Any) -> Any:
    """GET /api/v1/health: each domain, its relays and whether they are alive. While a setting
    is missing or invalid, an operator (READ role) is told which one and why (503)."""
    try:
        await cloud()
    except ConfigurationError as exc:
        return await _misconfigured(request, exc)

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        instance.authenticator.authorize(caller, auth.Role.READ)
        domains = []
        for report in await instance.service.relays.health():
            domains.append(
                {
                    "domain": report.domain,
                    "state": report.state,
                    "relays": [
                        {
                            "relay": relay.relay_id,
                            "version": relay.version,
                            "lastHeartbeat": relay.last_seen,
                            "fresh": relay.relay_id in report.fresh,
                            "capabilities": relay.capabilities,
                            "lastError": relay.last_error,
                        }
                        for relay in report.relays
                    ],
                }
            )
        worst = {d["state"] for d in domains}
        overall = "offline" if worst == {"offline"} else "ok" if worst <= {"ok"} else "degraded"
        return respond(200, {"status": overall, "domains": domains})

    return await guarded(request, act)


async def _misconfigured(request: Any, problem: ConfigurationError) -> Any:
    """The health answer while the service cannot be built: the setting named to a caller the
    authentication settings (as far as they are usable) accept with the READ role."""
    log.error("not configured", extra={"setting": problem.setting, "error": problem.problem})
    authenticator = await _operator_authenticator(os.environ)
    if authenticator is None:
        return error(503, MISCONFIGURED, NOT_CONFIGURED)
    try:
        caller = await authenticator.authenticate(dict(request.headers))
        authenticator.authorize(caller, auth.Role.READ)
    except auth.AuthError as exc:
        return error(exc.status, exc.reason, exc.problem)
    body = {"status": "misconfigured", "setting": problem.setting, "problem": problem.problem}
    return respond(503, body)


# The settings that only make sense together: when one of them is unusable, all go, so that a
# broken role list never leaves its keys with every role, nor a tenant its audiences.
_TOGETHER = (
    (auth.API_KEYS_SETTING, auth.API_KEY_ROLES_SETTING),
    (auth.TENANT_SETTING, auth.AUDIENCES_SETTING, auth.JWKS_URL_SETTING),
)
_operator: tuple[auth.AuthSettings, auth.Authenticator] | None = None


def operator_auth_settings(environ: Mapping[str, str]) -> auth.AuthSettings | None:
    """The authentication settings without the ones that are unusable (an unresolved Key Vault
    reference, say) and those that belong with them, so that an operator can still be
    recognised; None when no way of authenticating is left."""
    usable = dict(environ)
    while True:
        try:
            settings = auth.AuthSettings.from_env(usable)
        except ConfigurationError as exc:
            group = next((g for g in _TOGETHER if exc.setting in g), (exc.setting,))
            if not any(usable.pop(name, None) is not None for name in group):
                return None
            continue
        return settings if settings.tenant_id or settings.api_keys else None


async def _operator_authenticator(environ: Mapping[str, str]) -> auth.Authenticator | None:
    """One authenticator for the usable settings, kept while they stay the same (its Entra ID
    signing keys are fetched once, not per request)."""
    global _operator  # noqa: PLW0603 - at most one per worker process, like the service
    settings = operator_auth_settings(environ)
    if settings is None:
        return None
    if _operator is None or _operator[0] != settings:
        if _operator is not None:
            await _operator[1].close()
        _operator = (settings, auth.Authenticator(settings))
    return _operator[1]


async def user_history(request: Any) -> Any:
    """GET /api/v1/users/{user}/requests?hours=24: the user's recent requests, newest first."""

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        instance.authenticator.authorize(caller, auth.Role.READ)
        user = request.route_params.get("user", "")
        raw = request.params.get("hours", "24")
        if not HOURS.fullmatch(raw):
            raise InvalidInput("hours", "must be a whole number of hours")
        records = await instance.service.history(user, int(raw))
        entries = [
            {
                "requestId": record.request_id,
                "receivedAt": record.received_at,
                "operation": record.operation,
                "source": record.source,
                "callerKind": record.caller_kind,
                "state": "completed" if record.status != "pending" else "pending",
                "status": record.status,
                "reason": record.reason,
                "message": record.message,
                "durationMs": record.duration_ms,
                "relay": record.relay,
            }
            for record in records
        ]
        return respond(200, {"user": user, "hours": int(raw), "requests": entries})

    return await guarded(request, act)


async def domain_keys(request: Any) -> Any:
    """GET /api/v1/domains/{domain}/keys: the JWKS to seal passwords to."""

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        instance.authenticator.authorize(caller, auth.Role.READ)
        jwks = await instance.service.encryption_keys(request.route_params.get("domain", ""))
        return respond(200, jwks, {"Cache-Control": "max-age=300"})

    return await guarded(request, act)


async def domain_policy(request: Any) -> Any:
    """GET /api/v1/domains/{domain}/policy: the password rules the relays report."""

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        instance.authenticator.authorize(caller, auth.Role.READ)
        return await _policy(instance, request.route_params.get("domain", ""))

    return await guarded(request, act)


async def user_policy(request: Any) -> Any:
    """GET /api/v1/users/{user}/policy: the password rules of the user's domain, as its relays
    report them. A signed-in user may read their own without the READ role: the pages show
    them before the user types a new password."""

    async def act(instance: Cloud, caller: auth.Caller) -> Any:
        user = user_reference(request.route_params.get("user", ""))
        instance.authenticator.authorize_read_of(caller, user)
        return await _policy(instance, await instance.service.route(user))

    return await guarded(request, act)


async def _policy(instance: Cloud, domain: str) -> Any:
    """The answer with `domain`'s password rules (404 policy.unknown before any report)."""
    policy, relay = await instance.service.policy(domain)
    if policy is None or relay is None:
        return error(404, "policy.unknown", "No relay has reported this domain's policy yet.")
    return respond(
        200,
        {"domain": relay.domain, "policy": policy, "relay": relay.relay_id,
         "reportedAt": relay.last_seen},
    )  # fmt: skip


async def page(request: Any) -> Any:
    """GET /api/pages/{*path}: the self-service pages, their files and their sign-in config
    (`writeback.cloud.pages`); anonymous: the pages sign the user in themselves."""
    reply = pages.serve(request.route_params.get("path") or "", os.environ)
    return func.HttpResponse(
        reply.body,
        status_code=reply.status,
        headers={**reply.headers, "Content-Type": reply.content_type},
    )


async def heartbeat(message: Any) -> None:
    """Service Bus trigger on writeback-heartbeats: record the relay that sent it."""
    instance = await cloud()
    await instance.service.relays.record_heartbeat(message.get_body().decode("utf-8", "replace"))


async def writeback_event(event: str, completed: Any) -> None:
    """Event Grid trigger: one delivered event's JSON text, a requested CloudEvent or an event
    in the Event Grid schema. The Completed CloudEvent goes to the output binding `completed`
    (`func.Out[str]`)."""
    requested = events.RequestedEvent.from_json(event)
    if requested is None:
        log.warning("event dropped: not one JSON object with unique members")
        return
    instance = await _cloud_for_trigger()
    handler = events.EventHandler(instance.service, instance.service.audit, instance.telemetry)
    answer = await handler.handle(requested)
    if answer is not None:
        completed.set(answer.to_json())


async def entra_audit(messages: Any) -> None:
    """Event Hubs trigger (cardinality many) on the Entra audit log stream."""
    global _stream  # noqa: PLW0603 - one audit stream per Cloud (its settings read once)
    instance = await _cloud_for_trigger()
    if _stream is None or _stream[0] is not instance:
        _stream = (
            instance,
            drift.AuditStream(
                instance.service, instance.service.audit, instance.telemetry, instance.events
            ),
        )
    batch = messages if isinstance(messages, list) else [messages]
    await _stream[1].process(message.get_body() for message in batch)


async def sweep_replies(timer: Any) -> None:
    """Timer trigger: adopt the reply sessions of gone instances, record their outcomes
    (`writeback.cloud.sweep`). A run the host missed (the app was down) comes late, marked past
    due: it is the same sweep, and covers what the missed ones would have."""
    instance = await _cloud_for_trigger()
    if getattr(timer, "past_due", False):
        log.info("sweep past due")
    await sweep.sweep(instance.service)


async def _cloud_for_trigger() -> Cloud:
    try:
        return await cloud()
    except ConfigurationError as exc:
        # Raised: the host retries (Event Grid) or logs the batch; nothing can be done without it.
        log.error("not configured", extra={"setting": exc.setting, "error": exc.problem})
        raise
