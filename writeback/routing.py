"""Which AD domain a user belongs to, from the account reference that names the user.

A UPN routes by its suffix, looked up in configuration: every domain the cloud serves routes its
own DNS name; alternate UPN suffixes (a forest's `uPNSuffixes`, e.g. `contoso.com` for
`corp.contoso.local`) are listed explicitly. Matching is exact and case-insensitive: a suffix
never routes its subdomains, because a UPN suffix is a string a forest chose, not a DNS zone.
A SID routes by its domain SID and `DOMAIN\\name` by its NetBIOS name, both as the domains'
relays announce them in their signed heartbeats (`DomainNames`): a relay that announces them is
one that can find a user by them. A GUID (or immutable ID) names no domain: the caller names it
(`domain`), or the only configured domain is meant. A name no configured domain claims is refused
before anything is sealed or sent, so a request never reaches relays of the wrong domain.
Imports nothing of ours but the protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from writeback.errors import ConfigurationError
from writeback.protocol.accounts import AccountRef, AnchorKind
from writeback.protocol.messages import domain_problem


class UnknownDomain(LookupError):
    """The user's name (UPN suffix, domain SID, NetBIOS name) belongs to no configured domain."""


class DomainRequired(LookupError):
    """The reference names no domain (a GUID) and several domains are configured."""


class DomainMismatch(LookupError):
    """The caller named a domain, and the user's name belongs to another one."""


@dataclass(frozen=True)
class DomainNames:
    """What the relays announce of their domains: NetBIOS name (upper case) and domain SID, each
    to its domain. Built from the heartbeats kept (`writeback.cloud.relays`)."""

    netbios: Mapping[str, str] = field(default_factory=dict)
    sids: Mapping[str, str] = field(default_factory=dict)


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

    def route_account(
        self, ref: AccountRef, names: DomainNames | None = None, domain: str | None = None
    ) -> str:
        """The domain of the account `ref` names, the caller's `domain` (a configured one, lower
        case) checked against it. UnknownDomain when the name belongs to no configured domain,
        DomainRequired for a GUID with no `domain` among several domains, DomainMismatch when
        `domain` is not the one the name belongs to."""
        names = names or DomainNames()
        if ref.kind is AnchorKind.GUID:
            if domain is not None:
                return domain
            if len(self.domains) == 1:
                return next(iter(self.domains))
            raise DomainRequired(ref.value)
        if ref.kind is AnchorKind.UPN:
            routed = self.route(ref.value)
        else:
            key = ref.domain_sid if ref.kind is AnchorKind.SID else ref.netbios
            found = (names.sids if ref.kind is AnchorKind.SID else names.netbios).get(key or "")
            if found is None or found not in self.domains:
                raise UnknownDomain(key)
            routed = found
        if domain is not None and domain != routed:
            raise DomainMismatch(routed)
        return routed

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
