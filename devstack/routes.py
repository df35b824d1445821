"""HTTP routes as the Functions host matches them: `routePrefix` from host.json, route templates
with parameters, literal segments compared without regard to case (ASP.NET Core routing), and a
method the function does not list answered 404, not 405 (azure-functions-host#10098).

Templates support what the host's router supports and the app may use: `{name}`, `{name?}`
(optional, last), `{*name}` (catch-all, last) and `{name:constraint}` for the constraints
`int`, `long`, `guid`, `alpha` and `bool`. Any other constraint is refused when the route is
built, rather than matched wrongly.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PREFIX = "api"
_PARAMETER = re.compile(
    r"^\{(?P<star>\*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<rule>[a-z]+))?(?P<optional>\?)?\}$"
)
_CONSTRAINTS = {
    "int": r"-?[0-9]+",
    "long": r"-?[0-9]+",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?i:true|false)",
}


def route_prefix(host_json: Path) -> str:
    """`extensions.http.routePrefix` of host.json ("api" when absent; "" means none)."""
    config: dict[str, Any] = json.loads(host_json.read_text()) if host_json.exists() else {}
    prefix = config.get("extensions", {}).get("http", {}).get("routePrefix", DEFAULT_PREFIX)
    return str(prefix).strip("/")


@dataclass(frozen=True)
class Route:
    """One HTTP-triggered function's route: its pattern, methods (empty: all) and target."""

    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str]
    target: Any

    def match(self, path: str) -> dict[str, str] | None:
        """The route's parameters in `path` (as sent, percent-encoded), each decoded once; None
        if it does not match."""
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {
            name: _decoded(value) for name, value in found.groupdict().items() if value is not None
        }


def _decoded(value: str) -> str:
    """A route value as ASP.NET Core gives it: percent-decoded once, except an encoded slash."""
    return urllib.parse.unquote(re.sub("%2[Ff]", lambda found: "%25" + found[0][1:], value))


def compile_route(prefix: str, template: str, methods: Iterable[str], target: Any) -> Route:
    """The route for `template` under `prefix`, as the host builds it."""
    segments = [s for s in (prefix.strip("/") + "/" + template.strip("/")).split("/") if s]
    pattern = ""
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        parameter = _PARAMETER.match(segment)
        if parameter is None:
            if "{" in segment or "}" in segment:
                raise ValueError(f"route {template!r}: segment {segment!r} is not emulated")
            pattern += "/" + "(?i:" + re.escape(segment) + ")"
            continue
        name, rule = parameter["name"], parameter["rule"]
        if rule is not None and rule not in _CONSTRAINTS:
            raise ValueError(f"route {template!r}: constraint {rule!r} is not emulated")
        if (parameter["star"] or parameter["optional"]) and not last:
            raise ValueError(f"route {template!r}: {segment!r} must be the last segment")
        body = ".*" if parameter["star"] else _CONSTRAINTS.get(rule or "", "[^/]+")
        group = f"/(?P<{name}>{body})"
        pattern += f"(?:{group})?" if parameter["optional"] or parameter["star"] else group
    return Route(
        template=template,
        pattern=re.compile(pattern or "/"),
        methods=frozenset(m.upper() for m in methods),
        target=target,
    )


def resolve(routes: Iterable[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route that takes `method` on `path` (as sent, percent-encoded), with its
    parameters; None means 404."""
    normalized = "/" + path.strip("/") if path.strip("/") else "/"
    for route in routes:
        parameters = route.match(normalized)
        if parameters is not None and (not route.methods or method.upper() in route.methods):
            return route, parameters
    return None
