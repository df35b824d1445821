"""What a running relay is doing, for `writeback-relay status` and monitoring.

The agent writes a small JSON file next to its journal (owner-only, replaced atomically) when it
starts, after every heartbeat and when it stops; `status` reads it together with the journal's
counts. It holds no secret: ids, times, counts and the last error (which never holds one either).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATUS_FILE = "relay-status.json"


@dataclass(frozen=True)
class RelayStatus:
    relay: str
    domain: str
    state: str  # starting, running, draining, stopped
    pid: int
    started_at: float
    updated_at: float
    last_heartbeat_at: float | None
    last_error: str | None
    handled: int
    in_flight: int


def status_path(journal: Path) -> Path:
    return journal.parent / STATUS_FILE


def write_status(path: Path, status: RelayStatus) -> None:
    """Replace the status file atomically, owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".status-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(status), handle)
    os.replace(temporary, path)


def read_status(path: Path) -> RelayStatus | None:
    try:
        return RelayStatus(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def healthy(status: RelayStatus | None, heartbeat_interval: float, now: float) -> bool:
    """Running, and a heartbeat within three intervals (the cloud's own freshness rule)."""
    return (
        status is not None
        and status.state == "running"
        and status.last_heartbeat_at is not None
        and now - status.last_heartbeat_at < 3 * heartbeat_interval
    )


def render(
    status: RelayStatus | None,
    counts: dict[str, int],
    heartbeat_interval: float,
    now: float | None = None,
) -> str:
    now = time.time() if now is None else now
    if status is None:
        lines = ["relay: no status file (the relay has not run here, or cannot write its state)"]
    else:
        beat = f"{now - status.last_heartbeat_at:.0f}s ago" if status.last_heartbeat_at else "never"
        lines = [
            f"relay: {status.relay} for {status.domain}, {status.state} (pid {status.pid}), "
            f"up {now - status.started_at:.0f}s",
            f"last heartbeat: {beat}",
            f"requests: {status.handled} handled, {status.in_flight} in flight",
            f"last error: {status.last_error or 'none'}",
        ]
    lines.append("journal: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    lines.append(
        "health: "
        + (
            "ok"
            if healthy(status, heartbeat_interval, now)
            else "NOT OK (not running, or no recent heartbeat)"
        )
    )
    return "\n".join(lines)
