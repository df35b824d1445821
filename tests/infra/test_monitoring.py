"""The workbook and the alert rules (infra/monitoring) read only what the code emits, and both
infra variants deploy them from the same files with the same thresholds.

Each KQL query is checked against writeback.cloud.signals: it reads only the `customMetrics`
and `traces` tables, every metric name and log message it names is a signal, every
customDimensions key it reads is a field of a signal it names, and every reason or status it
compares with is one the code has. The signals' emission is proved by tests/unit/test_signals.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra import bicep_model, terraform_model
from writeback.cloud import signals
from writeback.protocol import Reason, Status

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "monitoring"
WORKBOOK, ALERTS = MONITORING / "workbook.json", MONITORING / "alerts.json"
TABLES = {signals.METRICS, signals.LOGS}
# Things a query may name that are not tables: its own `let` names and KQL's operators.
_TABLE_AT_START = re.compile(r"^\s*(?:let\s+\w+\s*=\s*)?([A-Za-z_]\w*)\s*(?:\n|\|)", re.M)
_NAMES = re.compile(r'\b(name|message)\s*==\s*"([^"]+)"')
_NAMES_IN = re.compile(r"\bmessage\s+in\s*\(([^)]*)\)")
_FIELDS = re.compile(r'customDimensions\["([^"]+)"\]|customDimensions\.(\w+)')
_COMPARED = re.compile(r'customDimensions\["(reason|status)"\]\)\s*==\s*"([^"]+)"')
_STATUS_IN = re.compile(r"status\s+in\s*\(([^)]*)\)")
BY_NAME = {(s.table, s.name): s for s in signals.ALL}
STATUSES = {status.value for status in Status} | {"pending"}
# Metrics kept for other readers (Metrics Explorer, an operator's own queries), each with the
# reason the workbook reads another signal instead.
UNWATCHED = {
    signals.REQUEST_DURATION.name: "stored as count, sum, min and max: no percentiles",
    signals.DRIFT.name: "the `password drift` line names the drift record",
}


def problems(query: str) -> list[str]:
    """Every way `query` names something the code does not emit; empty when none."""
    tables = {t for t in _TABLE_AT_START.findall(query) if t != "print"} - _lets(query)
    found = [f"table {t} is not one the code writes to" for t in sorted(tables - TABLES)]
    named = _named(query, found)
    if not named:
        found.append("names no signal")
    fields = frozenset().union(*(signal.fields for signal in named))
    for bracket, dotted in _FIELDS.findall(query):
        field = bracket or dotted
        if field not in fields:
            found.append(f"customDimensions {field!r} is a field of none of {sorted(fields)}")
    compared = list(_COMPARED.findall(query))
    compared += [("status", v) for listed in _STATUS_IN.findall(query) for v in _quoted(listed)]
    for kind, value in compared:
        known = {r.value for r in Reason} if kind == "reason" else STATUSES
        if value not in known:
            found.append(f"{kind} {value!r} is not one the code emits")
    return found


def _named(query: str, found: list[str]) -> list[signals.Signal]:
    """The signals `query` names (`name ==`, `message ==`, `message in`); unknown names are
    added to `found`."""
    names = [
        (signals.METRICS if column == "name" else signals.LOGS, name)
        for column, name in _NAMES.findall(query)
    ]
    names += [(signals.LOGS, n) for listed in _NAMES_IN.findall(query) for n in _quoted(listed)]
    named = []
    for table, name in names:
        signal = BY_NAME.get((table, name))
        if signal is None:
            found.append(f"{'name' if table == signals.METRICS else 'message'} {name!r} is no "
                         f"signal in {table}")  # fmt: skip
        else:
            named.append(signal)
    return named


def _quoted(listed: str) -> list[str]:
    return re.findall(r'"([^"]+)"', listed)


def _lets(query: str) -> set[str]:
    return set(re.findall(r"\blet\s+(\w+)\s*=", query))


def workbook() -> dict[str, Any]:
    return json.loads(WORKBOOK.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def alerts() -> dict[str, dict[str, Any]]:
    return json.loads(ALERTS.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def queries() -> dict[str, str]:
    """Every KQL query, by where it is: the workbook's panels and the alerts."""
    found = {
        f"workbook {item['name']}": item["content"]["query"]
        for item in workbook()["items"]
        if item["type"] == 3
    }
    found.update({f"alert {name}": alert["query"] for name, alert in alerts().items()})
    return found


class TestQueries:
    def test_the_workbook_is_a_workbook(self) -> None:
        """The workbook file parses as a Notebook/1.0 workbook with the panels operators
        read, each a query over Application Insights, and its resource left to the infra."""
        document = workbook()
        assert document["version"] == "Notebook/1.0"
        assert document["fallbackResourceIds"] == ["{applicationInsightsId}"]
        panels = {item["name"] for item in document["items"] if item["type"] == 3}
        assert panels == {
            "outcomes", "reasons", "latency", "relays", "drift", "throttled", "forged"
        }  # fmt: skip
        for item in document["items"]:
            if item["type"] == 3:
                assert item["content"]["resourceType"] == "microsoft.insights/components"

    @pytest.mark.parametrize("where", sorted(queries()))
    def test_each_query_reads_only_what_the_code_emits(self, where: str) -> None:
        """The query's tables, metric names, log messages, fields and codes are the signals'."""
        assert problems(queries()[where]) == []

    def test_every_signal_is_watched(self) -> None:
        """Each signal is read by some panel or alert, or listed with the reason it is not."""
        text = "\n".join(queries().values())
        unwatched = {s.name for s in signals.ALL if f'"{s.name}"' not in text}
        assert unwatched == set(UNWATCHED)

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ('traces\n| where message == "heartbeats"', "message 'heartbeats' is no signal"),
            ('customMetrics\n| where name == "writeback.request"', "is no signal in customMetrics"),
            ('requests\n| where name == "writeback.requests"', "table requests"),
            (
                'traces\n| where message == "heartbeat"\n| extend d = customDimensions["dc"]',
                "customDimensions 'dc'",
            ),
            (
                'customMetrics\n| where name == "writeback.requests"\n'
                '| where tostring(customDimensions["reason"]) == "account.throttle"',
                "reason 'account.throttle'",
            ),
        ],
    )
    def test_a_query_naming_something_else_is_reported(self, query: str, expected: str) -> None:
        """A misspelt event, metric, table, field or reason code is reported."""
        assert any(expected in problem for problem in problems(query)), problems(query)


class TestAlertDefinitions:
    def test_the_four_alerts(self) -> None:
        """A domain with no live relay, the failure rate, any drift and any forged message,
        each evaluated at least every window."""
        definitions = alerts()
        assert set(definitions) == {"relay-offline", "failure-rate", "drift", "forged-message"}
        for alert in definitions.values():
            assert terraform_model.iso_seconds(alert["evaluationFrequency"]) <= (
                terraform_model.iso_seconds(alert["windowSize"])
            )
        assert definitions["failure-rate"]["metricMeasureColumn"] == "failure_percent"
        assert "failure_percent" in definitions["failure-rate"]["query"]
        assert "{domains}" in definitions["relay-offline"]["query"]


def _bicep_alerts(parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    model = bicep_model.load(parameters=parameters)
    found = {}
    for rule in model.of_type("Microsoft.Insights/scheduledQueryRules"):
        properties = rule.body["properties"]
        (criterion,) = properties["criteria"]["allOf"]
        found[rule.name.rsplit("-writeback-", 1)[-1]] = {
            "severity": properties["severity"],
            "evaluationFrequency": properties["evaluationFrequency"],
            "windowSize": properties["windowSize"],
            "threshold": criterion["threshold"],
            "operator": criterion["operator"],
            "timeAggregation": criterion["timeAggregation"],
            "metricMeasureColumn": criterion.get("metricMeasureColumn", ""),
            "dimensions": [d["name"] for d in criterion["dimensions"]],
            "query": criterion["query"],
        }
    return found


def _terraform_alerts(model: terraform_model.TerraformModel) -> dict[str, dict[str, Any]]:
    """What Terraform's one for_each makes of alerts.json, with the variables' defaults: the
    resource is checked to take each value from the file or from its override map."""
    (rule,) = model.resources["azurerm_monitor_scheduled_query_rules_alert_v2"].values()
    assert rule["for_each"] == "${local.alerts}"
    (criterion,) = rule["criteria"]
    assert rule["severity"] == "${each.value.severity}"
    assert rule["evaluation_frequency"] == "${each.value.evaluationFrequency}"
    assert rule["window_duration"] == (
        "${lookup(local.alert_windows, each.key, each.value.windowSize)}"
    )
    assert criterion["threshold"] == (
        "${lookup(local.alert_thresholds, each.key, each.value.threshold)}"
    )
    assert criterion["operator"] == "${each.value.operator}"
    assert criterion["time_aggregation_method"] == "${each.value.timeAggregation}"
    defaults = {name: v.get("default") for name, v in model.variables.items()}

    def resolved(value: str) -> Any:
        whole = re.fullmatch(r"\$\{var\.(\w+)\}", value)
        if whole:
            return defaults[whole.group(1)]
        return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(defaults[m.group(1)]), value)

    windows = {k: resolved(v) for k, v in model.locals["alert_windows"].items()}
    thresholds = {k: resolved(v) for k, v in model.locals["alert_thresholds"].items()}
    return {
        name: {
            "severity": alert["severity"],
            "evaluationFrequency": alert["evaluationFrequency"],
            "windowSize": windows.get(name, alert["windowSize"]),
            "threshold": thresholds.get(name, alert["threshold"]),
            "operator": alert["operator"],
            "timeAggregation": alert["timeAggregation"],
        }
        for name, alert in alerts().items()
    }


class TestBothVariants:
    def test_both_load_the_same_files(self) -> None:
        """Bicep's loadTextContent/loadJsonContent and Terraform's file() read the one
        workbook and the one alerts file."""
        bicep = (bicep_model.BICEP_ROOT / "modules" / "operations.bicep").read_text()
        assert "loadTextContent('../../monitoring/workbook.json')" in bicep
        assert "loadJsonContent('../../monitoring/alerts.json')" in bicep
        terraform = (ROOT / "infra" / "terraform" / "operations.tf").read_text()
        assert 'file("${path.module}/../monitoring/workbook.json")' in terraform
        assert 'file("${path.module}/../monitoring/alerts.json")' in terraform

    def test_the_same_alerts_with_the_same_thresholds(self) -> None:
        """Both deploy the four alerts with the same severity, frequency, window, threshold,
        operator and aggregation, the deployment's two choices at the same defaults."""
        bicep = _bicep_alerts({})
        terraform = _terraform_alerts(terraform_model.load(ROOT / "infra" / "terraform"))
        keys = ("severity", "evaluationFrequency", "windowSize", "threshold", "operator")
        assert {n: {k: a[k] for k in keys} for n, a in bicep.items()} == {
            n: {k: a[k] for k in keys} for n, a in terraform.items()
        }
        assert bicep["relay-offline"]["windowSize"] == "PT15M"
        assert bicep["failure-rate"]["threshold"] == 10

    def test_bicep_fills_in_the_domains_and_the_choices(self) -> None:
        """The relay-offline query lists every domain; the parameters reach the rules."""
        bicep = _bicep_alerts({"relayOfflineMinutes": 30, "alertFailureRatePercent": 25})
        domains = [d["name"].lower() for d in bicep_model.example_parameters()["domains"]]
        query = bicep["relay-offline"]["query"]
        assert "{domains}" not in query
        listed = json.loads(re.search(r"dynamic\((\[.*?\])\)", query).group(1))  # type: ignore[union-attr]
        assert listed == domains
        assert bicep["relay-offline"]["windowSize"] == "PT30M"
        assert bicep["failure-rate"]["threshold"] == 25
        assert bicep["failure-rate"]["metricMeasureColumn"] == "failure_percent"
        assert bicep["drift"]["metricMeasureColumn"] == ""

    def test_the_action_group_only_with_an_email(self) -> None:
        """No e-mail address, no action group and no action; with one, every alert notifies
        it, in Bicep as in Terraform (count on the address)."""
        plain = bicep_model.load(parameters={})
        assert plain.of_type("Microsoft.Insights/actionGroups") == [] or not any(
            r.deployed for r in plain.of_type("Microsoft.Insights/actionGroups")
        )
        for rule in plain.of_type("Microsoft.Insights/scheduledQueryRules"):
            assert rule.body["properties"]["actions"]["actionGroups"] == []
        mailed = bicep_model.load(parameters={"alertEmail": "ops@example.com"})
        (group,) = [r for r in mailed.of_type("Microsoft.Insights/actionGroups") if r.deployed]
        receivers = group.body["properties"]["emailReceivers"]
        assert [r["emailAddress"] for r in receivers] == ["ops@example.com"]
        for rule in mailed.of_type("Microsoft.Insights/scheduledQueryRules"):
            assert len(rule.body["properties"]["actions"]["actionGroups"]) == 1
        terraform = terraform_model.load(ROOT / "infra" / "terraform")
        (ag,) = terraform.resources["azurerm_monitor_action_group"].values()
        assert ag["count"] == '${var.alert_email == "" ? 0 : 1}'
        (rule,) = terraform.resources["azurerm_monitor_scheduled_query_rules_alert_v2"].values()
        assert rule["action"] == [
            {"action_groups": "${azurerm_monitor_action_group.operators[*].id}"}
        ]
