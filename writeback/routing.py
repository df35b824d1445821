"""Which AD domain a user belongs to: the UPN suffix, looked up in configuration.

Every domain the cloud serves routes its own DNS name; alternate UPN suffixes (a forest's
`uPNSuffixes`, e.g. `contoso.com` for `corp.contoso.local`) are listed explicitly. Matching is
exact and case-insensitive: a suffix never routes its subdomains, because a UPN suffix is a
string a forest chose, not a DNS zone. An unknown suffix is refused before anything is sealed or
sent, so a request never reaches relays of the wrong domain. Imports nothing of ours but the
protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from writeback.errors import ConfigurationError
from writeback.protocol.messages import domain_problem


class UnknownDomain(LookupError):
    """The UPN's suffix is routed to no configured domain."""


@dataclass(frozen=True)
class Routes:
    """UPN suffix (lower case) → AD domain (lower case)."""

    suffixes: Mapping[str, str]

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self.suffixes.values())

    def route(self, upn: str) -> str:
        """The domain of `upn`; UnknownDomain when its suffix is not configured."""
        _, at, suffix = upn.rpartition("@")
        domain = self.suffixes.get(suffix.lower()) if at else None
        if domain is None:
            raise UnknownDomain(suffix)
        return domain

    @classmethod
    def build(
        cls,
        domains: Iterable[str],
        alternate: Mapping[str, str] | None = None,
        *,
        domains_setting: str = "WRITEBACK_DOMAINS",
        suffixes_setting: str = "WRITEBACK_UPN_SUFFIXES",
    ) -> Routes:
        """Routes for `domains` plus `alternate` suffix → domain; the settings name the culprit."""
        suffixes: dict[str, str] = {}
        for domain in (d.strip().lower() for d in domains):
            problem = domain_problem(domain)
            if problem:
                raise ConfigurationError(domains_setting, f"{domain!r}: {problem}")
            suffixes[domain] = domain
        if not suffixes:
            raise ConfigurationError(domains_setting, "names no domain")
        for given_suffix, given_domain in (alternate or {}).items():
            suffix, domain = given_suffix.strip().lower(), given_domain.strip().lower()
            if domain not in suffixes.values():
                raise ConfigurationError(
                    suffixes_setting, f"{suffix!r} routes to {domain!r}, which is not configured"
                )
            if domain_problem(suffix):
                raise ConfigurationError(suffixes_setting, f"{suffix!r} is not a UPN suffix")
            if suffixes.get(suffix, domain) != domain:
                raise ConfigurationError(suffixes_setting, f"{suffix!r} is routed twice")
            suffixes[suffix] = domain
        return cls(suffixes)

    @classmethod
    def parse(cls, domains: str, alternate: str = "") -> Routes:
        """From the app settings: `corp.example.com,emea.example.com` and
        `example.com=corp.example.com;example.de=emea.example.com`."""
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in alternate.split(";"))):
            suffix, equals, domain = item.partition("=")
            if not equals:
                raise ConfigurationError("WRITEBACK_UPN_SUFFIXES", f"{item!r} is not suffix=domain")
            if suffix.strip().lower() in pairs:
                raise ConfigurationError("WRITEBACK_UPN_SUFFIXES", f"{suffix!r} is routed twice")
            pairs[suffix.strip().lower()] = domain
        return cls.build(filter(None, domains.split(",")), pairs)
