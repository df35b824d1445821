"""The journal survives a relay that dies mid-request: what was committed is there on restart.

Each test runs a child Python process that writes to the journal and then dies with os._exit,
which skips close(), atexit handlers and every finally block, as a killed relay would. The parent
then reopens the file as a restarted relay does. (A power cut is not simulated; synchronous=FULL
is what covers that case.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from writeback.relay.journal import Journal, State

REPO = Path(__file__).resolve().parents[2]

# The child's script: argv is [path, request_id, step, outcome-json]. It dies without closing.
CHILD = """
import json, os, sys, time
from pathlib import Path
from writeback.relay.journal import Journal

path, request_id, step, recorded = sys.argv[1:5]
journal = Journal(Path(path))
journal.begin(request_id, domain="corp.example", operation="reset", user="alice@corp.example",
              expires_at=time.time() + 300)
journal.applying(request_id)
if step == "finish":
    journal.finish(request_id, json.loads(recorded))
os._exit(9)
"""


def crash_after(path: Path, request_id: str, step: str, recorded: object = None) -> None:
    """Run the child to `step` (applying or finish) and check that it died as planned."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), request_id, step, json.dumps(recorded)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 9, child.stderr
    # The write is still only in the WAL: reopening exercises SQLite's recovery, not a checkpoint.
    assert path.with_name(path.name + "-wal").stat().st_size > 0


class TestCrash:
    def test_applying_survives_a_crash(self, tmp_path: Path) -> None:
        """An entry marked APPLYING by a relay that then died is APPLYING, and unfinished, after."""
        path = tmp_path / "journal.sqlite3"
        crash_after(path, "req-crash-1", "applying")
        with Journal(path) as journal:
            entry = journal.get("req-crash-1")
            assert entry is not None
            assert entry.state is State.APPLYING
            assert entry.outcome is None
            assert entry.received_at <= time.time()
            assert [e.request_id for e in journal.unfinished()] == ["req-crash-1"]
            assert journal.counts()["applying"] == 1

    def test_outcome_survives_a_crash(self, tmp_path: Path) -> None:
        """An outcome recorded just before the relay died is read back intact."""
        path = tmp_path / "journal.sqlite3"
        recorded = {
            "status": "rejected",
            "reason": "policy.history",
            "message": "The new password was used recently.",
            "detail": {"ldap": 19, "win32": "0000052D", "dc": "dc1.corp.example"},
            "elapsedMs": 41,
        }
        crash_after(path, "req-crash-2", "finish", recorded)
        with Journal(path) as journal:
            entry = journal.get("req-crash-2")
            assert entry is not None
            assert entry.state is State.REJECTED
            assert entry.outcome == recorded
            assert journal.unfinished() == []
            # A redelivery after the restart gets the recorded entry, not a second attempt.
            duplicate = journal.begin(
                "req-crash-2",
                domain="corp.example",
                operation="reset",
                user="alice@corp.example",
                expires_at=time.time() + 300,
            )
            assert duplicate == entry
