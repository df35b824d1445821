"""The exceptions Writeback raises, and when.

    WritebackError                  base of everything below; never carries a secret
    ├── ConfigurationError          a setting is missing or invalid (names the setting);
    │                               raised at start-up, before anything connects
    └── DirectoryError              the directory could not be used; carries the outcome reason
        ├── DirectoryUnavailable    no DC answered, or the connection broke (directory.unavailable)
        ├── DirectoryAccessDenied   the relay's account lacks a right (directory.access_denied)
        └── DirectoryProtocolError  the DC answered something we cannot use (directory.error)

Library exceptions (ldap3, ssl, socket) are converted to these in one place per adapter
(`writeback.relay.ldap.translate_ldap_error`), with the original kept as `__cause__`. Directory
answers about a password (policy, wrong old password, ...) are not exceptions: they are outcomes.
"""

from __future__ import annotations

from writeback.protocol import Reason


class WritebackError(Exception):
    """Base class. Messages are for administrators and never contain a secret."""


class ConfigurationError(WritebackError):
    """A setting is missing or invalid. `setting` names it, as the configuration file spells it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class DirectoryError(WritebackError):
    """The directory could not be used for this operation."""

    reason: Reason = Reason.DIRECTORY_ERROR


class DirectoryUnavailable(DirectoryError):
    """No configured DC could be reached, bound or kept connected."""

    reason = Reason.DIRECTORY_UNAVAILABLE


class DirectoryAccessDenied(DirectoryError):
    """The relay's service account was refused a read it needs."""

    reason = Reason.DIRECTORY_ACCESS_DENIED


class DirectoryProtocolError(DirectoryError):
    """The DC answered in a way the relay cannot interpret."""

    reason = Reason.DIRECTORY_ERROR
