"""`python -m devstack.servicebus`: run the local Service Bus broker in the foreground.

    python -m devstack.servicebus --port 5672 \\
        --queue writeback-requests-corp.example.com:dedup=600,lock=60,max-delivery=5,ttl=120 \\
        --queue writeback-outcomes:session,ttl=300,dlq-on-expiry --queue writeback-heartbeats
    python -m devstack.servicebus --config Config.json   # the official emulator's file works

It prints the connection string once it accepts connections and runs until SIGTERM or SIGINT.
Loopback only; no credentials are checked (see docs/local-servicebus.md).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from devstack.servicebus import LocalServiceBus, is_loopback
from writeback.transport.memory import QueueConfig

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def iso_duration(text: str) -> float:
    """Seconds of an ISO 8601 duration as Service Bus writes them (`PT1M`, `P14D`, `PT0.5S`)."""
    match = _DURATION.match(text.strip())
    if not match or text.strip() in ("P", "PT"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return (
        parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
    ) + parts.get("s", 0)


def queue_option(spec: str) -> QueueConfig:
    """`NAME[:session,lock=S,max-delivery=N,ttl=S,dedup=S,dlq-on-expiry]` -> QueueConfig."""
    name, _, options = spec.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"queue without a name: {spec!r}")
    fields: dict[str, Any] = {}
    for option in filter(None, (o.strip() for o in options.split(","))):
        key, _, value = option.partition("=")
        try:
            if key == "session" and not value:
                fields["requires_session"] = True
            elif key == "dlq-on-expiry" and not value:
                fields["dead_letter_on_expiration"] = True
            elif key == "lock":
                fields["lock_duration"] = float(value)
            elif key == "max-delivery":
                fields["max_delivery_count"] = int(value)
            elif key == "ttl":
                fields["default_ttl"] = float(value)
            elif key == "dedup":
                fields["duplicate_detection_window"] = float(value)
            else:
                raise ValueError(option)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad option {option!r} for queue {name!r}") from None
    return QueueConfig(name, **fields)


def config_queues(document: dict[str, Any]) -> list[QueueConfig]:
    """Queues from a JSON config: `{"queues": [{"name": ..., <QueueConfig fields>}]}`, or the
    official emulator's Config.json (`UserConfig.Namespaces[].Queues[].Properties`)."""
    if "UserConfig" not in document:
        return [QueueConfig(**queue) for queue in document.get("queues", [])]
    queues = []
    for namespace in document["UserConfig"].get("Namespaces", []):
        if namespace.get("Topics"):
            print("topics are not emulated; ignoring them", file=sys.stderr)
        for queue in namespace.get("Queues", []):
            props = queue.get("Properties", {})
            dedup = props.get("RequiresDuplicateDetection", False)
            ttl = props.get("DefaultMessageTimeToLive")
            queues.append(
                QueueConfig(
                    queue["Name"],
                    requires_session=props.get("RequiresSession", False),
                    lock_duration=iso_duration(props.get("LockDuration", "PT1M")),
                    max_delivery_count=int(props.get("MaxDeliveryCount", 10)),
                    default_ttl=iso_duration(ttl) if ttl else None,
                    duplicate_detection_window=iso_duration(
                        props.get("DuplicateDetectionHistoryTimeWindow", "PT10M")
                    )
                    if dedup
                    else None,
                    dead_letter_on_expiration=props.get("DeadLetteringOnMessageExpiration", False),
                )
            )
    return queues


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.servicebus",
        description="A local Service Bus-compatible AMQP broker, for development and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5672, help="AMQP port; 0 picks a free one")
    parser.add_argument("--queue", type=queue_option, action="append", default=[], metavar="SPEC")
    parser.add_argument("--config", type=Path, help="JSON file with the queues")
    args = parser.parse_args(argv)
    queues: list[QueueConfig] = list(args.queue)
    if args.config is not None:
        try:
            queues += config_queues(json.loads(args.config.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--config {args.config}: {exc}")
    if not queues:
        parser.error("give at least one --queue or a --config with queues")
    if not is_loopback(args.host):
        parser.error("--host must be a loopback address: no authorisation is emulated")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        bus = LocalServiceBus(queues, host=args.host, port=args.port)
        bus.start()
    except (RuntimeError, ValueError) as exc:
        print(f"local Service Bus: {exc}", file=sys.stderr)
        return 1
    try:
        names = ", ".join(q.name + (" (sessions)" if q.requires_session else "") for q in queues)
        print(f"local Service Bus on {bus.host}:{bus.port}, queues: {names}", file=sys.stderr)
        print(bus.connection_string, flush=True)
        stop.wait()
    finally:
        bus.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
