"""The cloud side's configuration: the Function App's settings, read once and validated.

Every setting the code reads is named here or in the module that owns it (`auth.AuthSettings`,
`secrets.CloudKeysSettings`); `local.settings.sample.json` and the infrastructure set the same
names (tests check both). Connections follow the Functions convention: `ServiceBusConnection`
and `AzureWebJobsStorage` hold a connection string locally, and in Azure their
`__fullyQualifiedNamespace` / `__tableServiceUri` forms select the managed identity. A value
that still reads `@Microsoft.KeyVault(...)` is a reference Azure could not resolve: start-up
stops and names it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from writeback.cloud.auth import TENANT_SETTING as TENANT
from writeback.cloud.auth import AuthSettings
from writeback.cloud.secrets import CloudKeysSettings, check_resolved
from writeback.cloud.service import ServiceSettings
from writeback.errors import ConfigurationError
from writeback.protocol.messages import MAX_LIFETIME_SECONDS
from writeback.routing import Routes
from writeback.transport.settings import ServiceBusSettings

DOMAINS = "WRITEBACK_DOMAINS"
UPN_SUFFIXES = "WRITEBACK_UPN_SUFFIXES"
WAIT = "WRITEBACK_WAIT_SECONDS"
LIFETIME = "WRITEBACK_REQUEST_LIFETIME_SECONDS"
HEARTBEAT = "WRITEBACK_HEARTBEAT_INTERVAL_SECONDS"
AUDIT_TABLE = "WRITEBACK_AUDIT_TABLE"
AGENTS_TABLE = "WRITEBACK_AGENTS_TABLE"
SERVICEBUS = "ServiceBusConnection"
SERVICEBUS_NAMESPACE = "ServiceBusConnection__fullyQualifiedNamespace"
STORAGE = "AzureWebJobsStorage"
STORAGE_TABLES = "AzureWebJobsStorage__tableServiceUri"
APPINSIGHTS = "APPLICATIONINSIGHTS_CONNECTION_STRING"
APPINSIGHTS_AUTH = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
# The event triggers (docs/events.md). The host resolves the first four itself (binding
# expressions and identity-based connections in function_app.py); the code reads the last three.
AUDIT_HUB = "WRITEBACK_AUDIT_HUB"
AUDIT_CONSUMER_GROUP = "WRITEBACK_AUDIT_CONSUMER_GROUP"
AUDIT_HUB_NAMESPACE = "EntraAuditHub__fullyQualifiedNamespace"
EVENTS_TOPIC_ENDPOINT = "WritebackEvents__topicEndpointUri"
UNLOCK_ON_SELF_SERVICE = "WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE"
DRIFT_WINDOW = "WRITEBACK_DRIFT_WINDOW_SECONDS"
DRIFT_FORCE_CHANGE = "WRITEBACK_DRIFT_FORCE_CHANGE"
MICROSOFT_WRITEBACK_DOMAINS = "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS"
# The sweeper's timer (writeback.cloud.sweep): an NCRONTAB schedule the host resolves itself
# (`%WRITEBACK_SWEEP_SCHEDULE%` in function_app.py); the host refuses to start without it.
SWEEP_SCHEDULE = "WRITEBACK_SWEEP_SCHEDULE"
# The self-service pages (writeback.cloud.pages): their SPA registration's client id. They sign
# in at the API's authority (WRITEBACK_AUTH_AUTHORITY, writeback.cloud.auth) for its tenant.
PAGES_CLIENT_ID = "WRITEBACK_PAGES_CLIENT_ID"
PAGES_SCOPE = "Writeback.Self"  # the API's delegated scope (writeback/entra/app-registration.json)
HTTP_LIMIT_SECONDS = 200  # Azure's load balancer ends an HTTP call at 230 s; stay well inside


@dataclass(frozen=True)
class Storage:
    connection_string: str | None = field(default=None, repr=False)
    table_endpoint: str | None = None
    audit_table: str = "WritebackAudit"
    agents_table: str = "WritebackAgents"


@dataclass(frozen=True)
class EventSettings:
    """What the Entra audit stream trigger does (docs/events.md): unlock in AD after an Entra
    self-service unlock, how far around an Entra password event a writeback request still
    counts as its match, whether drift should force a change at next logon, and which domains
    Microsoft's own writeback (Entra Connect, Cloud Sync) also serves (lower case): there, what
    Microsoft's SSPR library logged was written back by Microsoft, so it is neither drift nor an
    unlock for writeback to send."""

    unlock_on_self_service: bool = False
    drift_window_seconds: float = 300.0
    drift_force_change: bool = False
    microsoft_writeback_domains: frozenset[str] = frozenset()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], domains: Collection[str] | None = None
    ) -> EventSettings:
        """The settings in `environ`; `domains` are the writeback domains (lower case), read
        from WRITEBACK_DOMAINS when not given."""
        if domains is None:
            domains = {d.strip().lower() for d in environ.get(DOMAINS, "").split(",")} - {""}
        return cls(
            unlock_on_self_service=_flag(environ, UNLOCK_ON_SELF_SERVICE),
            drift_window_seconds=_seconds(environ, DRIFT_WINDOW, 300, 1, 86400),
            drift_force_change=_flag(environ, DRIFT_FORCE_CHANGE),
            microsoft_writeback_domains=_microsoft_domains(environ, domains),
        )


@dataclass(frozen=True)
class PagesSettings:
    """What the pages sign in with: the SPA's client id, the authority (its origin is the only
    other one their CSP allows) and the API's delegated scope."""

    client_id: str
    authority: str
    scope: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PagesSettings:
        """The pages sign users in where the API's tokens come from: WRITEBACK_AUTH_AUTHORITY
        (Entra ID's unless set) for WRITEBACK_AUTH_TENANT_ID, checked as AuthSettings checks
        them."""
        client_id = environ.get(PAGES_CLIENT_ID, "").strip()
        if not client_id:
            raise ConfigurationError(PAGES_CLIENT_ID, "set it to the pages' client id")
        auth = AuthSettings.from_env(environ)
        if auth.tenant_id is None:
            raise ConfigurationError(TENANT, "the pages sign users in with Entra ID: set it")
        named = [a for a in auth.audiences if a.startswith("api://")] or list(auth.audiences)
        scope = f"{named[0].rstrip('/')}/{PAGES_SCOPE}" if named else None
        return cls(client_id=client_id, authority=f"{auth.authority}/{auth.tenant_id}", scope=scope)


@dataclass(frozen=True)
class CloudSettings:
    routes: Routes
    service: ServiceSettings
    servicebus: ServiceBusSettings
    storage: Storage
    auth: AuthSettings
    keys: CloudKeysSettings
    appinsights: str | None = field(default=None, repr=False)
    appinsights_authentication: str | None = None
    events: EventSettings = field(default_factory=EventSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CloudSettings:
        check_resolved(environ)
        routes = Routes.parse(environ.get(DOMAINS, ""), environ.get(UPN_SUFFIXES, ""))
        wait = _seconds(environ, WAIT, 25, 1, HTTP_LIMIT_SECONDS)
        lifetime = int(_seconds(environ, LIFETIME, 60, 5, MAX_LIFETIME_SECONDS))
        if wait > lifetime:
            raise ConfigurationError(WAIT, f"must not exceed {LIFETIME} ({lifetime}s)")
        service = ServiceSettings(
            wait_seconds=wait,
            lifetime_seconds=lifetime,
            heartbeat_interval=_seconds(environ, HEARTBEAT, 60, 1, 3600),
        )
        return cls(
            routes=routes,
            service=service,
            servicebus=_servicebus(environ),
            storage=_storage(environ),
            auth=AuthSettings.from_env(environ),
            keys=CloudKeysSettings.from_env(environ),
            appinsights=environ.get(APPINSIGHTS) or None,
            appinsights_authentication=environ.get(APPINSIGHTS_AUTH) or None,
            events=EventSettings.from_env(environ, routes.domains),
        )


def _seconds(
    environ: Mapping[str, str], name: str, default: float, low: float, high: float
) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(name, f"{raw[:40]!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise ConfigurationError(name, f"must be between {low:g} and {high:g} seconds")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise ConfigurationError(name, f"{raw[:40]!r} is not true or false")


def _microsoft_domains(environ: Mapping[str, str], domains: Collection[str]) -> frozenset[str]:
    """The domains Microsoft's writeback also serves: each one must be a writeback domain, or
    the setting would silently do nothing (a typo would leave drift on for Microsoft's resets)."""
    listed = environ.get(MICROSOFT_WRITEBACK_DOMAINS, "").split(",")
    named = frozenset(filter(None, (d.strip().lower() for d in listed)))
    for domain in sorted(named):
        if domain not in domains:
            raise ConfigurationError(
                MICROSOFT_WRITEBACK_DOMAINS, f"{domain[:80]!r} is not one of {DOMAINS}"
            )
    return named


def _servicebus(environ: Mapping[str, str]) -> ServiceBusSettings:
    connection_string = environ.get(SERVICEBUS, "").strip()
    namespace = environ.get(SERVICEBUS_NAMESPACE, "").strip()
    if connection_string:
        table: dict[str, object] = {"connection_string": connection_string}
    elif namespace:
        table = {"namespace": namespace}
    else:
        raise ConfigurationError(
            SERVICEBUS_NAMESPACE, f"set it (Azure, managed identity) or {SERVICEBUS} (local)"
        )
    return ServiceBusSettings.from_mapping(table, SERVICEBUS, {})


def _storage(environ: Mapping[str, str]) -> Storage:
    connection_string = environ.get(STORAGE, "").strip()
    endpoint = environ.get(STORAGE_TABLES, "").strip()
    if not connection_string and not endpoint:
        raise ConfigurationError(STORAGE_TABLES, f"set it (Azure) or {STORAGE} (local)")
    return Storage(
        connection_string=connection_string or None,
        table_endpoint=None if connection_string else endpoint,
        audit_table=environ.get(AUDIT_TABLE, "").strip() or "WritebackAudit",
        agents_table=environ.get(AGENTS_TABLE, "").strip() or "WritebackAgents",
    )
