"""The relay's journal: every request id it has seen, what state it reached and how it ended.

Service Bus delivers at least once, so the same request can arrive twice (a lock that expired, a
relay that crashed before completing the message). Before touching the directory the relay calls
`Journal.begin`: a new id is recorded, an id already seen comes back with its recorded state, so a
duplicate resends the recorded outcome instead of applying a password twice, and an entry left
RECEIVED/APPLYING by a crash is resolved by asking the DC what is true (the pipeline's
`_earlier_write`) rather than retried blindly or inferred from pwdLastSet. Ids are
pruned after the replay window; `begin` refuses ids whose expiry lies beyond that window, so a
pruned id can never be replayed successfully.

The journal must never hold a secret. It cannot know what is secret, so callers pass it only the
outcome message (status, reason, message, detail, timings), the user's name as the request gave
it and the objectGUID of the account it resolved to, never a command or anything that carries a
password. The GUID is what crash recovery goes by: an entry left APPLYING is resolved against the
account that was being written, whatever the name now finds. Entries written before the GUID
was recorded (schema version 1) have none and are resolved by their name, as then. The file
records user names, so it is owner-only (0600) and the journal refuses to open a file that
others can read, as the relay does for its keys.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType

from writeback.errors import ConfigurationError, InvalidTransition, JournalError, ProtocolError
from writeback.relay import permissions

SETTING = "relay.journal"
BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock before giving up
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces


class State(enum.StrEnum):
    """Where a request is: seen, about to be written to the directory, or ended (an outcome)."""

    RECEIVED = "received"
    APPLYING = "applying"
    APPLIED = "applied"
    REJECTED = "rejected"
    FAILED = "failed"


FINAL_STATES = frozenset({State.APPLIED, State.REJECTED, State.FAILED})
_UNFINISHED = (State.RECEIVED.value, State.APPLYING.value)


@dataclass(frozen=True)
class Entry:
    """One request id as the journal recorded it. `outcome` is None until the entry is final."""

    request_id: str
    state: State
    domain: str
    operation: str
    user: str
    received_at: float
    updated_at: float
    expires_at: float
    outcome: Mapping[str, object] | None
    # objectGUID of the account the request resolved to; None before APPLYING, for a request
    # that found no account, and in entries of journals written before it was recorded.
    account: str | None = None

    @property
    def final(self) -> bool:
        """True once the request has an outcome; a final entry never changes again."""
        return self.state in FINAL_STATES


# Schema migrations, one tuple of statements per version; PRAGMA user_version counts those applied.
# Append, never edit: a relay upgraded in place runs only the versions its file has not seen.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE requests (
            request_id  TEXT PRIMARY KEY,
            state       TEXT NOT NULL CHECK (state IN
                            ('received', 'applying', 'applied', 'rejected', 'failed')),
            domain      TEXT NOT NULL,
            operation   TEXT NOT NULL,
            user_name   TEXT NOT NULL,
            received_at REAL NOT NULL,
            updated_at  REAL NOT NULL,
            expires_at  REAL NOT NULL,
            outcome     TEXT,
            -- the database itself refuses an outcome on an unfinished entry and vice versa
            CHECK ((outcome IS NULL) = (state IN ('received', 'applying')))
        )""",
        "CREATE INDEX requests_received_at ON requests (received_at)",
    ),
    # The resolved account's objectGUID (crash recovery goes by it, not by the name given).
    ("ALTER TABLE requests ADD COLUMN account TEXT",),
)
SCHEMA_VERSION = len(_MIGRATIONS)
_COLUMNS = (
    "request_id, state, domain, operation, user_name, received_at, updated_at, expires_at, "
    "outcome, account"
)


class Journal:
    """The SQLite journal of request ids. Safe to share between the relay's worker threads.

    Threading: one connection (`check_same_thread=False`) guarded by one lock. SQLite admits one
    writer at a time anyway, every operation here is a millisecond-sized statement or two, and a
    single connection means our own threads never meet SQLITE_BUSY and `close()` has exactly one
    connection to close. The busy timeout still covers other processes (an admin's CLI) on the file.
    """

    def __init__(
        self,
        path: Path,
        *,
        replay_window: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(replay_window) and replay_window > 0):
            raise ValueError(f"replay_window must be a positive number of seconds: {replay_window}")
        self.path = path
        self.replay_window = replay_window
        self._clock = clock
        self._lock = threading.Lock()
        _create_owner_only(path)
        try:
            # isolation_level=None: we issue BEGIN ourselves, so read-then-write can be IMMEDIATE.
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(SETTING, f"cannot open {path}: {exc}") from exc
        try:
            self._configure()
        except sqlite3.Error as exc:
            self._db.close()
            raise ConfigurationError(SETTING, f"cannot use {path}: {exc}") from exc
        except ConfigurationError:
            self._db.close()
            raise

    def _configure(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            # WAL needs shared memory, which network filesystems often lack; rollback journaling
            # would also work but is not what was tested for crash safety, so refuse loudly.
            raise ConfigurationError(SETTING, f"{self.path}: WAL journaling unavailable ({mode})")
        # Durability is chosen per transaction (see _immediate): FULL unless told otherwise.
        self._db.execute("PRAGMA synchronous=FULL")
        # Pruned rows name users; overwrite them instead of leaving them in free pages.
        self._db.execute("PRAGMA secure_delete=ON")
        with self._immediate():
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    SETTING,
                    f"{self.path} has schema version {version}, newer than this relay's "
                    f"{SCHEMA_VERSION}; upgrade the relay",
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own integer.
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        # The one place sqlite3's errors become ours: the caller then applies nothing.
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {type(exc).__name__}: {exc}") from exc

    @contextlib.contextmanager
    def _immediate(self, *, synced: bool = True) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a read that decides a write cannot be
        # overtaken by another process between the two (a deferred BEGIN could be).
        #
        # synced (synchronous=FULL): the commit fsyncs the WAL, so it survives a power loss; the
        # APPLYING mark and every outcome need that, or a password could be applied twice or a
        # duplicate answered differently. Unsynced (NORMAL) survives a crash of the relay but not
        # of the machine: only the RECEIVED insert uses it (see begin). Set before every
        # transaction, so a failed switch back can never leave a later commit unsynced.
        with self._reading():
            self._db.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Never leave a transaction open on the shared connection; SQLite may already
                # have rolled back by itself (disk full, I/O error).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def begin(
        self, request_id: str, *, domain: str, operation: str, user: str, expires_at: float
    ) -> Entry | None:
        """Record a new id as RECEIVED and return None, or return the Entry of an id already seen.

        An id already seen comes back unchanged whatever its expiry, so a late duplicate gets the
        recorded outcome (never a second, different one). A new id is refused if it has expired
        (request.expired) or expires further than the replay window ahead (request.malformed,
        field expiresAt), since such an id could be replayed after its entry is pruned.
        """
        _check_request_id(request_id)
        # Unsynced: a RECEIVED entry lost to a power cut is harmless. Nothing reaches the
        # directory before `applying` commits synced, and that fsync of the WAL makes this insert
        # durable too; an outcome recorded without APPLYING is committed synced by `finish`.
        # Without the entry a redelivery is simply new again (and checks pwdLastSet, being a
        # redelivery). This saves one of the three fsyncs of a request.
        with self._immediate(synced=False) as db:
            seen = _select_one(db, request_id)
            if seen is not None:
                return seen
            now = self._clock()
            if not math.isfinite(expires_at):
                raise ProtocolError("request.malformed", "expiry is not a time", field="expiresAt")
            if expires_at <= now:
                raise ProtocolError("request.expired", f"request {request_id} has expired")
            if expires_at > now + self.replay_window:
                raise ProtocolError(
                    "request.malformed",
                    f"expires more than {self.replay_window:g}s ahead (the replay window)",
                    field="expiresAt",
                )
            db.execute(
                f"INSERT INTO requests ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",  # noqa: S608 -- fixed column list
                (request_id, State.RECEIVED.value, domain, operation, user, now, now, expires_at),
            )
            return None

    def applying(self, request_id: str, account: str | None = None) -> None:
        """Mark a RECEIVED request APPLYING to `account` (the objectGUID it resolved to); call
        right before the directory write.

        Any other transition raises InvalidTransition: an entry already APPLYING may already have
        changed the password, so it must not be written again.
        """
        with self._immediate() as db:
            changed = db.execute(
                "UPDATE requests SET state = ?, updated_at = ?, account = ?"
                " WHERE request_id = ? AND state = ?",
                (State.APPLYING.value, self._clock(), account, request_id, State.RECEIVED.value),
            ).rowcount
            if changed != 1:
                seen = _select_one(db, request_id)
                raise InvalidTransition(request_id, _state(seen), "mark it applying")

    def finish(
        self, request_id: str, outcome: Mapping[str, object], account: str | None = None
    ) -> Entry:
        """Record the outcome of a RECEIVED or APPLYING request; its status becomes the state,
        and `account` (the objectGUID it resolved to) is kept unless it is None.

        `outcome["status"]` must be applied, rejected or failed (else ValueError), and the outcome
        must be JSON-serialisable. A final entry is never finished again (InvalidTransition): a
        recorded outcome is what every duplicate receives, so it must never change.
        """
        status = outcome.get("status")
        if not isinstance(status, str) or status not in FINAL_STATES:
            raise ValueError(f"outcome status must be applied, rejected or failed, not {status!r}")
        try:
            recorded = json.dumps(dict(outcome), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"outcome of {request_id} is not JSON-serialisable: {exc}") from exc
        with self._immediate() as db:
            changed = db.execute(
                "UPDATE requests SET state = ?, updated_at = ?, outcome = ?,"
                " account = COALESCE(?, account) WHERE request_id = ? AND state IN (?, ?)",
                (State(status).value, self._clock(), recorded, account, request_id, *_UNFINISHED),
            ).rowcount
            entry = _select_one(db, request_id)
            if changed != 1 or entry is None:
                raise InvalidTransition(request_id, _state(entry), "record an outcome")
            return entry

    def get(self, request_id: str) -> Entry | None:
        """The entry for an id, or None if the journal has not seen it (or has pruned it)."""
        with self._reading() as db:
            return _select_one(db, request_id)

    def unfinished(self) -> list[Entry]:
        """RECEIVED and APPLYING entries, oldest first: what a restarted relay must resolve."""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE state IN (?, ?)"  # noqa: S608 -- fixed column list
                " ORDER BY received_at, request_id",
                _UNFINISHED,
            ).fetchall()
        return [_entry(row) for row in rows]

    def prune(self) -> int:
        """Delete final entries received more than the replay window ago; return how many.

        Only entries whose expiry has also passed go, so shortening the window between runs
        cannot free an id that is still valid. Unfinished entries stay until resolved: deleting
        an APPLYING entry would forget that a password may have been written.
        """
        now = self._clock()
        with self._immediate() as db:
            return db.execute(
                "DELETE FROM requests WHERE received_at < ? AND expires_at < ?"
                " AND state NOT IN (?, ?)",
                (now - self.replay_window, now, *_UNFINISHED),
            ).rowcount

    def counts(self) -> dict[str, int]:
        """How many entries are in each state; every state is present, with 0 if none."""
        totals = {state.value: 0 for state in State}
        with self._reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state")
            totals.update({str(state): int(count) for state, count in rows})
        return totals

    def close(self) -> None:
        """Close the database; what `finish` and `applying` committed is already on disk. Safe to
        call twice."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _check_request_id(request_id: str) -> None:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ProtocolError(
            "request.malformed", "must be 1 to 128 printable ASCII characters, no spaces", "id"
        )


def _create_owner_only(path: Path) -> None:
    """Create the file 0600 if missing; refuse an existing one that group or others can use."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_EXCL: created here with 0600 from the start, never chmod-ed after a window at 0644.
        # An existing journal is left as it is; its mode is checked below.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        else:
            permissions.make_private(path)  # Windows: empty still, and ours alone from now on
    except OSError as exc:
        raise ConfigurationError(SETTING, f"cannot create {path}: {exc.strerror}") from exc
    # SQLite gives -wal and -shm the database's mode, but a stale one could have been left looser.
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            status = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigurationError(SETTING, f"cannot read {candidate}: {exc.strerror}") from exc
        if not stat.S_ISREG(status.st_mode):
            raise ConfigurationError(SETTING, f"{candidate} is not a regular file")
        # Refuse rather than chmod: a loose mode means someone else chose it, and they should know.
        problem = permissions.problem(candidate, status, precise=False)
        if problem:
            raise ConfigurationError(SETTING, problem)


def _state(entry: Entry | None) -> State | None:
    return None if entry is None else entry.state


def _select_one(db: sqlite3.Connection, request_id: str) -> Entry | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM requests WHERE request_id = ?",  # noqa: S608 -- fixed column list
        (request_id,),
    ).fetchone()
    return None if row is None else _entry(row)


_Row = tuple[str, str, str, str, str, float, float, float, str | None, str | None]  # _COLUMNS


def _entry(row: _Row) -> Entry:
    request_id, state, domain, operation, user, received, updated, expires, outcome, account = row
    return Entry(
        request_id=request_id,
        state=State(state),
        domain=domain,
        operation=operation,
        user=user,
        received_at=received,
        updated_at=updated,
        expires_at=expires,
        outcome=None if outcome is None else _decode(outcome),
        account=account,
    )


def _decode(recorded: str) -> Mapping[str, object]:
    decoded: object = json.loads(recorded)
    if not isinstance(decoded, dict):
        raise sqlite3.DatabaseError("journal outcome is not a JSON object")
    # Read-only view: an Entry is frozen, and callers must not edit what every duplicate receives.
    return MappingProxyType(decoded)
