"""The cloud's secrets as owner-only files in a local directory, for development.

Each file must be a regular file, not a link, owned by this user and closed to group and others:
the signing key forges requests. A secret's value never appears in a message.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from writeback.cloud.secrets.source import SECRETS_DIR_ENV, secret_name
from writeback.errors import ConfigurationError, SecretsUnavailable

MAX_SECRET_BYTES = 25 * 1024  # Key Vault's own limit on a secret's value


class LocalSecrets:
    """Secrets as files named after them in `directory`, for development. On POSIX each file must
    be a regular file owned by this user and closed to group and others, as the relay demands of
    its keys: the signing key forges requests. (Windows has no mode bits; protect the directory
    with an ACL there.) Files are small and read synchronously."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def __repr__(self) -> str:
        return f"LocalSecrets({str(self._directory)!r})"

    async def get(self, name: str) -> str:
        path = self._directory / secret_name(name)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            handle = os.open(path, flags)
        except FileNotFoundError:
            raise SecretsUnavailable(
                name, f"no file {name} in {self._directory}", missing=True
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a link could point anywhere
                raise ConfigurationError(SECRETS_DIR_ENV, f"{path} is a symbolic link") from exc
            raise SecretsUnavailable(name, f"cannot open {path}: {exc.strerror}") from exc
        try:
            # Checked on the open file, so the file read is the file checked.
            _check_private(path, os.fstat(handle))
            data = os.read(handle, MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise SecretsUnavailable(name, f"cannot read {path}: {exc.strerror}") from exc
        finally:
            os.close(handle)
        if len(data) > MAX_SECRET_BYTES:
            raise SecretsUnavailable(name, f"{path} is larger than {MAX_SECRET_BYTES} bytes")
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise SecretsUnavailable(name, f"{path} is not UTF-8 text") from None

    async def close(self) -> None:
        """Nothing to release."""


def _check_private(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise ConfigurationError(SECRETS_DIR_ENV, f"{path} is not a regular file")
    if sys.platform == "win32":
        return
    if status.st_uid != os.getuid():
        raise ConfigurationError(
            SECRETS_DIR_ENV, f"{path} is owned by uid {status.st_uid}, not by uid {os.getuid()}"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            SECRETS_DIR_ENV, f"{path} is open to group or others (mode {mode:o}); chmod 600 it"
        )
