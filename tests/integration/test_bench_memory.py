"""The memory run's short version (`make bench-memory` runs 50,000 requests): a relay process on
the local broker, requests at a steady rate, its RSS sampled as outcomes arrive."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench import memory

pytestmark = pytest.mark.timeout(120)


class TestMemoryRun:
    def test_every_request_is_applied_and_the_relay_rss_is_sampled(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """300 resets at 100/s through a relay process all come back applied (the run stops
        otherwise), with one RSS sample of the relay per 100 outcomes and the verdict lines."""
        options = argparse.Namespace(requests=300, rate=100.0, sample=100, trace_heap=False)
        asyncio.run(memory.run(options))
        printed = capsys.readouterr().out
        rows = [line for line in printed.splitlines() if line.startswith("| ") and "MB" not in line]
        assert [row.split("|")[1].strip() for row in rows] == ["100", "200", "300"]
        assert "flat within 5 MB" in printed
        assert all(0 < float(row.split("|")[2]) < 500 for row in rows)
