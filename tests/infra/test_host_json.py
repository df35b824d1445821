"""host.json as the Functions host reads it in Azure: the telemetry it keeps and how it sends it.

The host writes each invocation as a Request under the `Host.Results` log category; a level above
Information there, or sampling that may drop Requests, hides invocations from Application
Insights. With `telemetryMode` OpenTelemetry the host and the Python worker share one trace per
invocation (the deployments set the worker's side; test_first_deployment.py checks them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    return json.loads((ROOT / "host.json").read_text())


def _level(levels: dict[str, str], category: str) -> str:
    """The level the host applies to `category`: the longest configured prefix, else default."""
    matches = [name for name in levels if category == name or category.startswith(f"{name}.")]
    return levels[max(matches, key=len)] if matches else levels.get("default", "Information")


class TestRequests:
    @pytest.mark.parametrize("category", ["Host.Results", "Function", "Host.Aggregator"])
    def test_invocations_are_logged(self, host: dict[str, Any], category: str) -> None:
        """Invocation results, function logs and aggregates are kept at Information or below."""
        levels = host["logging"]["logLevel"]
        assert LEVELS.index(_level(levels, category)) <= LEVELS.index("Information")

    def test_sampling_never_drops_requests_or_exceptions(self, host: dict[str, Any]) -> None:
        """If Application Insights sampling is on, Requests and Exceptions are excluded from it."""
        sampling = host["logging"].get("applicationInsights", {}).get("samplingSettings", {})
        if sampling.get("isEnabled", True):
            excluded = set(sampling.get("excludedTypes", "").split(";"))
            assert {"Request", "Exception"} <= excluded


class TestOnePipeline:
    def test_the_host_speaks_opentelemetry(self, host: dict[str, Any]) -> None:
        """The host exports OpenTelemetry, the worker's format, so both share one trace."""
        assert host.get("telemetryMode") == "OpenTelemetry"
