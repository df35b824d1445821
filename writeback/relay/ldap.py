"""Connections to domain controllers: TLS, bind, the DC's own description, and failover.

This is the one place that talks ldap3 at the connection level and the one place where ldap3's
exceptions become ours (`translate_ldap_error`). TLS is always on and always validated: the
certificate must chain to the configured CA and name the host we connected to (the standard
library's own hostname check, TLS 1.2 or later). Of the configured DCs the relay prefers the PDC
emulator, which every other DC forwards password changes to, and fails over to the next one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from writeback.errors import (
    DirectoryAccessDenied,
    DirectoryError,
    DirectoryProtocolError,
    DirectoryUnavailable,
    DirectoryWriteUnknown,
)
from writeback.relay.settings import DirectorySettings, ServerAddress

log = logging.getLogger(__name__)

POLICY_HINTS_OID = "1.2.840.113556.1.4.2239"
POLICY_HINTS_DEPRECATED_OID = "1.2.840.113556.1.4.2066"
# PolicyHintsRequestValue ::= SEQUENCE { Flags INTEGER }, Flags = 1 (MS-ADTS 3.1.1.3.4.1.27).
POLICY_HINTS_VALUE = bytes.fromhex("3003020101")
SD_FLAGS_OID = "1.2.840.113556.1.4.801"
SD_FLAGS_DACL = bytes.fromhex("3003020104")  # read the DACL only; needs no privilege

# AcceptSecurityContext "data" codes in a failed bind (Samba emulates Windows).
BIND_DATA = {
    "52e": "wrong user name or password",
    "525": "user not found",
    "530": "logon not permitted at this time",
    "531": "logon not permitted from this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "password must be changed",
    "775": "account locked out",
}
_BIND_DATA = re.compile(r"data ([0-9a-f]{3,4})", re.IGNORECASE)

# ldap3 exceptions that mean "the connection to this DC is gone or never came up".
_UNAVAILABLE = (
    ldap_exc.LDAPCommunicationError,  # socket open/send/receive, session terminated, ...
    ldap_exc.LDAPResponseTimeoutError,
    ldap_exc.LDAPStartTLSError,
    ldap_exc.LDAPSSLConfigurationError,
    ldap_exc.LDAPCertificateError,
    ldap_exc.LDAPSocketReceiveError,
    ssl.SSLError,
    OSError,
)


# Raised before a request leaves this host (the socket was not open): nothing reached the DC.
_NOT_SENT = (ldap_exc.LDAPSocketOpenError,)


def translate_ldap_error(exc: BaseException, where: str) -> DirectoryError:
    """The one conversion from ldap3/ssl/socket exceptions to ours. Never includes a password."""
    if isinstance(exc, DirectoryError):
        return exc
    if isinstance(exc, _UNAVAILABLE):
        text = str(exc) or type(exc).__name__
        if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ldap_exc.LDAPCertificateError):
            text = f"TLS certificate not trusted or not for this host ({text})"
        return DirectoryUnavailable(f"{where}: {text}")
    if isinstance(exc, ldap_exc.LDAPBindError | ldap_exc.LDAPInvalidCredentialsResult):
        return DirectoryAccessDenied(f"{where}: bind refused: {describe_bind_failure(str(exc))}")
    if isinstance(exc, ldap_exc.LDAPOperationResult):
        return DirectoryProtocolError(f"{where}: LDAP {exc.result}: {exc.description}")
    return DirectoryProtocolError(f"{where}: {type(exc).__name__}: {exc}")


def describe_bind_failure(message: str) -> str:
    match = _BIND_DATA.search(message)
    if match and match.group(1).lower() in BIND_DATA:
        return f"{BIND_DATA[match.group(1).lower()]} (data {match.group(1).lower()})"
    return message.rstrip("\x00").strip() or "invalid credentials"


class ValidatingTls(ldap3.Tls):
    """ldap3 TLS with the standard library's certificate and hostname validation.

    ldap3 2.9.1 turns the context's hostname check off and matches names itself with the
    deprecated `ssl.match_hostname`; here the context does it, and refuses anything below TLS 1.2.
    """

    def __init__(self, ca_file: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(cafile=self.ca_certs_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        connection.socket = context.wrap_socket(
            connection.socket,
            server_hostname=connection.server.host,
            do_handshake_on_connect=do_handshake,
        )


@dataclass(frozen=True)
class DomainController:
    """What a DC says about itself after the bind (rootDSE and the domain head)."""

    address: ServerAddress
    dns_host_name: str
    naming_context: str
    server_dn: str
    pdc_dn: str
    supported_controls: frozenset[str]
    current_time: datetime | None
    # The domain's other names: nETBIOSName of its crossRef (CORP in CORP\\alice) and the
    # objectSid of the domain head (every account SID of the domain starts with it); None when
    # the relay may not read them.
    netbios: str | None = None
    domain_sid: str | None = None

    @property
    def is_pdc(self) -> bool:
        return self.server_dn.lower() == self.pdc_dn.lower()

    @property
    def policy_hints_oid(self) -> str | None:
        """The policy-hints control this DC advertises: 2239, else 2066, else None."""
        for oid in (POLICY_HINTS_OID, POLICY_HINTS_DEPRECATED_OID):
            if oid in self.supported_controls:
                return oid
        return None


def sid_to_str(raw: bytes) -> str:
    """A binary SID (MS-DTYP 2.4.2.2), as objectSid and tokenGroups carry it, in its S-1-...
    form."""
    authority = int.from_bytes(raw[2:8], "big")
    count = raw[1]
    subs = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(count)]
    return "-".join(["S", str(raw[0]), str(authority), *map(str, subs)])


def sid_bytes(sid: str) -> bytes:
    """A SID's binary form (MS-DTYP 2.4.2.2), as objectSid holds it: the filter value that finds
    it."""
    parts = sid.split("-")
    if parts[:2] != ["S", "1"] or len(parts) < 3:
        raise ValueError(f"not a SID: {sid!r}")
    subs = [int(p) for p in parts[3:]]
    if any(s > 2**32 - 1 for s in subs) or int(parts[2]) >= 2**48:
        raise ValueError(f"not a SID: {sid!r}")
    return (
        bytes([1, len(subs)])
        + int(parts[2]).to_bytes(6, "big")
        + b"".join(s.to_bytes(4, "little") for s in subs)
    )


def first(raw: dict[str, list[bytes]], name: str, default: str = "") -> str:
    values = raw.get(name) or []
    return values[0].decode("utf-8", "replace") if values else default


def parse_generalized_time(value: str) -> datetime | None:
    try:
        return datetime.strptime(value.split(".", 1)[0].rstrip("Z"), "%Y%m%d%H%M%S").replace(
            tzinfo=UTC
        )
    except ValueError:
        return None


def _tls_connection(
    settings: DirectorySettings, address: ServerAddress, user: str, password: str | bytes
) -> ldap3.Connection:
    """An open connection to `address` with TLS established and the certificate validated, not
    yet bound (a bind never travels in the clear)."""
    server = ldap3.Server(
        address.host,
        port=address.port,
        use_ssl=address.ldaps,
        tls=ValidatingTls(str(settings.ca_file)),
        get_info=ldap3.NONE,
        connect_timeout=settings.connect_timeout,
    )
    connection = ldap3.Connection(
        server,
        user=user,
        password=password,  # type: ignore[arg-type]  # ldap3 takes bytes as given; its stubs say str
        authentication=ldap3.SIMPLE,
        raise_exceptions=False,
        receive_timeout=max(1, round(settings.operation_timeout)),
        read_only=False,
    )
    where = address.url
    try:
        connection.open()
        if not address.ldaps and not connection.start_tls():
            raise DirectoryUnavailable(f"{where}: StartTLS refused: {connection.result}")
        if not (address.ldaps or connection.tls_started):
            raise DirectoryUnavailable(f"{where}: TLS did not start; refusing to bind")
    except Exception as exc:
        discard(connection)
        raise translate_ldap_error(exc, where) from exc
    return connection


def bind_answer(
    settings: DirectorySettings, address: ServerAddress, user: str, password: str
) -> str | None:
    """Bind as `user` with `password` on `address` and unbind: None when the bind succeeds, else
    the DC's data code (52e wrong password, 773 right password that must be changed, ...) or
    "" when it gave none. A wrong password counts as a bad attempt on the account."""
    # Bytes: ldap3 would SASLprep a str (RFC 4013 changes and refuses some characters), while
    # unicodePwd holds the password as given.
    connection = _tls_connection(settings, address, user, password.encode("utf-8"))
    try:
        if connection.bind():
            return None
        match = _BIND_DATA.search(str(connection.result.get("message", "")))
        return match.group(1).lower() if match else ""
    except Exception as exc:
        raise translate_ldap_error(exc, address.url) from exc
    finally:
        discard(connection)


class Link:
    """One bound, validated connection to one DC."""

    def __init__(self, settings: DirectorySettings, address: ServerAddress, password: str) -> None:
        self.address = address
        self.connection = _tls_connection(settings, address, settings.bind_user, password)
        where = address.url
        try:
            if not self.connection.bind():
                message = self.connection.result.get("message", "")
                raise DirectoryAccessDenied(
                    f"{where}: bind as {settings.bind_user} refused: "
                    f"{describe_bind_failure(message)}"
                )
        except Exception as exc:
            self.close()
            raise translate_ldap_error(exc, where) from exc
        try:
            self.controller = self._describe(settings.base_dn)
        except DirectoryError:
            self.close()
            raise

    def _describe(self, base_dn: str | None) -> DomainController:
        root = self.read(
            "",
            [
                "defaultNamingContext",
                "dnsHostName",
                "dsServiceName",
                "supportedControl",
                "currentTime",
                "configurationNamingContext",
            ],
        )
        naming_context = base_dn or first(root, "defaultNamingContext")
        domain = self.read(naming_context, ["fSMORoleOwner", "objectSid"])
        if not domain.get("fSMORoleOwner"):
            # Only a domain head names a PDC emulator and holds the password policy: an OU here
            # would silently turn the pre-check off.
            raise DirectoryProtocolError(
                f"{self.address.url}: directory.base_dn {naming_context!r} is not the domain's "
                "own DN (no fSMORoleOwner); leave it unset to use the DC's default naming context"
            )
        return DomainController(
            address=self.address,
            dns_host_name=first(root, "dnsHostName"),
            naming_context=naming_context,
            server_dn=first(root, "dsServiceName"),
            pdc_dn=first(domain, "fSMORoleOwner"),
            supported_controls=frozenset(
                v.decode("ascii", "replace") for v in root.get("supportedControl", [])
            ),
            current_time=parse_generalized_time(first(root, "currentTime")),
            netbios=self._netbios(first(root, "configurationNamingContext"), naming_context),
            domain_sid=sid_to_str(domain["objectSid"][0]) if domain.get("objectSid") else None,
        )

    def _netbios(self, configuration: str, naming_context: str) -> str | None:
        """The domain's NetBIOS name: nETBIOSName of the crossRef in CN=Partitions whose nCName
        is the domain. Read once per connection (it changes only with a domain rename); None,
        logged, when it cannot be read: down-level names then find no one."""
        if not configuration:
            return None
        try:
            found = self.search(
                f"CN=Partitions,{configuration}",
                f"(&(objectClass=crossRef)(nCName={escape_filter_chars(naming_context)})"
                "(nETBIOSName=*))",
                ["nETBIOSName"],
                scope="LEVEL",
                size_limit=2,
            )
        except DirectoryError as exc:
            log.warning("netbios_name_unreadable", extra={"error": str(exc)})
            return None
        names = {first(raw, "nETBIOSName").upper() for _, raw in found}
        if len(names) != 1:
            log.warning("netbios_name_unreadable", extra={"crossrefs": len(found)})
            return None
        return names.pop()

    def search(
        self,
        base: str,
        query: str,
        attributes: Sequence[str],
        *,
        scope: Literal["BASE", "LEVEL", "SUBTREE"] = "SUBTREE",
        size_limit: int = 0,
        controls: list[tuple[str, bool, bytes]] | None = None,
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        """Entries as (dn, raw attributes). Raises DirectoryError; an empty list is 'none'."""
        try:
            self.connection.search(
                base,
                query,
                search_scope=scope,
                attributes=list(attributes),
                size_limit=size_limit,
                controls=controls,
            )
        except Exception as exc:
            raise translate_ldap_error(exc, self.address.url) from exc
        result = self.connection.result
        code = result.get("result", 0)
        if code == 32:  # noSuchObject
            return []
        if code == 50:
            raise DirectoryAccessDenied(
                f"{self.address.url}: reading {base or 'rootDSE'} refused: {result.get('message')}"
            )
        if code not in (0, 4):  # 4: sizeLimitExceeded still returns the entries it found
            raise DirectoryProtocolError(
                f"{self.address.url}: search of {base or 'rootDSE'} failed: LDAP {code} "
                f"{result.get('message', '')}".rstrip()
            )
        return [
            (entry["dn"], entry["raw_attributes"])
            for entry in self.connection.response or []
            if entry.get("type") == "searchResEntry"
        ]

    def read(self, dn: str, attributes: Sequence[str], **kwargs: Any) -> dict[str, list[bytes]]:
        entries = self.search(dn, "(objectClass=*)", attributes, scope="BASE", **kwargs)
        return entries[0][1] if entries else {}

    def modify(
        self,
        dn: str,
        changes: dict[str, list[tuple[str, list[Any]]]],
        controls: list[tuple[str, bool, bytes]] | None = None,
    ) -> tuple[int, str]:
        """Send one modify; (result code, diagnostic message). Never retried here."""
        try:
            # types-ldap3 leaves modify unannotated
            self.connection.modify(dn, changes, controls=controls)  # type: ignore[no-untyped-call]
        except Exception as exc:
            error = translate_ldap_error(exc, self.address.url)
            if isinstance(error, DirectoryUnavailable) and not isinstance(exc, _NOT_SENT):
                # The request may have reached the DC and been applied before the connection
                # broke: "unavailable, try again" would be a false answer.
                raise DirectoryWriteUnknown(
                    f"{error}: the write was sent and no answer came, so it may have been applied"
                ) from exc
            raise error from exc
        finally:
            # ldap3 keeps the last request, unicodePwd included, on the connection until the
            # next operation: drop it, so no dump or debugger of a pooled link can show it.
            self.connection.request = None
        result = self.connection.result
        return int(result.get("result", 80)), str(result.get("message") or "")

    @property
    def alive(self) -> bool:
        return bool(self.connection.bound and not self.connection.closed)

    def close(self) -> None:
        discard(self.connection)


def discard(connection: ldap3.Connection) -> None:
    """Unbind and close the socket, also when opening failed half-way (ldap3 then leaves the
    socket it created open until garbage collection)."""
    # Closing a broken connection may fail; there is nothing left to do about it then.
    with contextlib.suppress(Exception):
        connection.unbind()
    sock = getattr(connection, "socket", None)
    if sock is not None:
        sock.close()


def connect(
    settings: DirectorySettings,
    password: str,
    open_link: Callable[[DirectorySettings, ServerAddress, str], Link] = Link,
) -> Link:
    """Bind to the PDC emulator if it is among the configured DCs, else the first that answers."""
    errors: list[DirectoryError] = []
    fallback: Link | None = None
    for address in settings.servers:
        try:
            link = open_link(settings, address, password)
        except DirectoryError as exc:
            errors.append(exc)
            log.warning("dc_unreachable", extra={"dc": address.url, "error": str(exc)})
            continue
        if link.controller.is_pdc:
            if fallback is not None:
                fallback.close()
            return link
        if fallback is None:
            fallback = link
        else:
            link.close()
    if fallback is not None:
        log.info(
            "dc_not_pdc", extra={"dc": fallback.address.url, "pdc": fallback.controller.pdc_dn}
        )
        return fallback
    summary = "; ".join(map(str, errors))
    # A DC that answers but refuses the bind points at the relay's account, the likelier fix.
    if any(isinstance(error, DirectoryAccessDenied) for error in errors):
        raise DirectoryAccessDenied(summary)
    # A DC that answers what the relay cannot use (a wrong base_dn) needs an administrator too.
    if any(isinstance(error, DirectoryProtocolError) for error in errors):
        raise DirectoryProtocolError(summary)
    raise DirectoryUnavailable(f"no domain controller answered: {summary}")
