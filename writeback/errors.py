"""The exceptions Writeback raises, and when.

    WritebackError                  base of everything below; never carries a secret
    ├── ConfigurationError          a setting is missing or invalid (names the setting);
    │                               raised at start-up, before anything connects
    ├── ProtocolError               a message is malformed, forged, undecryptable or expired;
    │                               carries the outcome reason and the offending field
    ├── TransportError              Service Bus could not be used for a send, receive or settlement
    │   ├── TransportUnavailable    connection, authentication, entity or timeout problems:
    │   │                           retry with backoff
    │   └── TransportLockLost       the message's lock expired or it was settled elsewhere: it
    │                               will be (or was) delivered again; do not settle it
    ├── AuthError                   the HTTP API refused a caller or could not check one; carries
    │                               `reason` (auth.*) and the HTTP `status`: auth.missing,
    │                               auth.invalid_token, auth.invalid_key (401), auth.forbidden
    │                               (403), auth.keys_unavailable (503: Entra's JWKS unreachable)
    ├── KeyStoreError               the relay's key store refused an operation (a pending pair
    │                               exists, the key to remove is active); the keys are unchanged
    ├── SecretsUnavailable          the cloud's secret source (Key Vault, or a local directory)
    │                               could not give a secret: missing, refused or unreachable;
    │                               names the secret, never carries its value
    ├── StorageError                the audit or agents table (Azure Table Storage) could not be
    │                               used: unreachable, refused, or it answered an error; names
    │                               the table and the operation, never an entity's contents
    ├── JournalError                the replay journal cannot be read or written (disk full, I/O
    │   │                           error, lock timeout): apply nothing, let the message come back
    │   └── InvalidTransition       a journal state change its lifecycle forbids (e.g. finishing
    │                               a request twice, as a concurrent duplicate delivery would)
    └── DirectoryError              the directory could not be used; carries the outcome reason
        ├── DirectoryUnavailable    no DC answered, or the connection broke (directory.unavailable)
        │   └── DirectoryWriteUnknown  a write was sent and no answer came: it may be applied
        │                           (request.outcome_unknown)
        ├── DirectoryAccessDenied   the relay's account lacks a right (directory.access_denied)
        └── DirectoryProtocolError  the DC answered something we cannot use (directory.error)

Library exceptions are converted to these in one place per adapter, with the original kept as
`__cause__`: ldap3/ssl/socket in `writeback.relay.ldap.translate_ldap_error`, joserfc in
`writeback.sealing` (for callers' Entra ID tokens, with aiohttp, in `writeback.cloud.auth`),
sqlite3 in `writeback.relay.journal`, azure-servicebus in
`writeback.transport.servicebus`, azure-core (Key Vault) in
`writeback.cloud.secrets.translate_keyvault_error`, azure-core (Table Storage) in
`writeback.cloud.tables.translate_storage_error`. Each `reason` is an outcome reason
code (`writeback.protocol.Reason`), except AuthError's `auth.*` codes, which are HTTP answers.
Directory answers about a password (policy, wrong old password, ...) are not exceptions: they
are outcomes.
"""

from __future__ import annotations


class WritebackError(Exception):
    """Base class. Messages are for administrators and never contain a secret."""


class ConfigurationError(WritebackError):
    """A setting is missing or invalid. `setting` names it, as the configuration file spells it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class ProtocolError(WritebackError):
    """A message could not be accepted: `reason` says why (request.malformed,
    request.invalid_signature, request.undecryptable, request.expired), `field` names the part
    of the message at fault when there is one. Never includes the message's secrets."""

    def __init__(self, reason: str, problem: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.reason = reason
        self.problem = problem
        self.field = field


class TransportError(WritebackError):
    """Service Bus refused or failed an operation."""


class TransportUnavailable(TransportError):
    """Service Bus cannot be reached or used right now; retry with backoff."""


class TransportLockLost(TransportError):
    """The message's lock is gone: it will be delivered again (to this or another relay)."""


class AuthError(WritebackError):
    """The HTTP API refused a caller (401, 403) or could not check its token (503).

    `reason` is an `auth.*` code (`writeback.cloud.auth.AuthReason`), `status` the HTTP status
    to answer with, `problem` a sentence safe to return to the caller: it never contains the
    token, the key or any other credential. `challenge`, when given, is the `WWW-Authenticate`
    value of a 401 that asks for more than a token (a claims challenge for step-up).
    """

    def __init__(
        self, reason: str, problem: str, status: int, *, challenge: str | None = None
    ) -> None:
        super().__init__(f"{reason}: {problem}")
        self.reason = reason
        self.problem = problem
        self.status = status
        self.challenge = challenge


class KeyStoreError(WritebackError):
    """The key store refused an operation (a pending pair already exists, the key to remove is
    active, ...). The keys on disk are unchanged."""


class SecretsUnavailable(WritebackError):
    """A secret could not be read. `secret` names it; `missing` is true when the source answered
    that it does not exist (as opposed to refusing access or not answering at all)."""

    def __init__(self, secret: str, problem: str, *, missing: bool = False) -> None:
        super().__init__(f"secret {secret}: {problem}")
        self.secret = secret
        self.problem = problem
        self.missing = missing


class StorageError(WritebackError):
    """A table of the cloud side (the audit trail, the agents registry) could not be used.
    `table` names it, `problem` says what went wrong (status and error code, never a response
    body or an entity's contents)."""

    def __init__(self, table: str, problem: str) -> None:
        super().__init__(f"table {table}: {problem}")
        self.table = table
        self.problem = problem


class JournalError(WritebackError):
    """The replay journal failed; the request must not be applied until it works again."""


class InvalidTransition(JournalError):
    """A state change the journal's lifecycle does not allow, or on an id never begun."""

    def __init__(self, request_id: str, state: str | None, wanted: str) -> None:
        where = "was never begun" if state is None else f"is {state}"
        super().__init__(f"request {request_id} {where}; cannot {wanted}")
        self.request_id = request_id
        self.state = state


class DirectoryError(WritebackError):
    """The directory could not be used for this operation."""

    reason = "directory.error"


class DirectoryUnavailable(DirectoryError):
    """No configured DC could be reached, bound or kept connected."""

    reason = "directory.unavailable"


class DirectoryWriteUnknown(DirectoryUnavailable):
    """A write was sent and the connection broke before its answer: it may have been applied.
    Never retried, never reported as "try again" (a retry of a change would fail on the old
    password, a retry of a reset could look like history)."""

    reason = "request.outcome_unknown"


class DirectoryAccessDenied(DirectoryError):
    """The relay's service account was refused a read it needs."""

    reason = "directory.access_denied"


class DirectoryProtocolError(DirectoryError):
    """The DC answered in a way the relay cannot interpret."""

    reason = "directory.error"
