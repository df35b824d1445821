"""Bicep and Terraform describe the same deployment, and both set every setting the code reads.

Both models are loaded for the same domains (the Bicep example's), with every secret given, and
compared on what matters for security and for the app: the queues and their properties, every
role assignment of the Function and of the relays (role and entity; Terraform's extra roles for
whoever runs it are its own), the storage redundancy, and the app settings. The settings the
code reads are found by scanning its source, so a setting renamed in the code and not in infra/
fails here; a test shows that with a renamed copy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra import bicep_model, terraform_model
from tests.unit.test_cloud_settings import NAME

ROOT = Path(__file__).resolve().parents[2]
SINGLETONS = {"application-insights", "storage-account", "key-vault", "servicebus-namespace"}


def seconds(duration: str | None) -> int | None:
    return None if duration is None else terraform_model.iso_seconds(duration)


@pytest.fixture(scope="module")
def bicep() -> bicep_model.Model:
    return bicep_model.load(
        parameters={"apiKeysEnabled": True, "apiKeys": "k" * 40, "cloudSigningKey": "{}"}
    )


@pytest.fixture(scope="module")
def terraform() -> terraform_model.TerraformModel:
    return terraform_model.load(ROOT / "infra" / "terraform")


@pytest.fixture(scope="module")
def domains(bicep: bicep_model.Model) -> list[str]:
    return [domain["name"] for domain in bicep.parameters["domains"]]


def bicep_queues(model: bicep_model.Model) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "session": bool(props.get("requiresSession", False)),
            "dedup": bool(props.get("requiresDuplicateDetection", False)),
            "dedup_window": seconds(props.get("duplicateDetectionHistoryTimeWindow"))
            if props.get("requiresDuplicateDetection")
            else None,
            "ttl": seconds(props.get("defaultMessageTimeToLive")),
            "dlq_on_expiry": bool(props.get("deadLetteringOnMessageExpiration", False)),
            "max_delivery": props.get("maxDeliveryCount"),
            "lock": seconds(props.get("lockDuration")),
        }
        for name, props in model.queues.items()
    }


def terraform_queues(
    model: terraform_model.TerraformModel, domains: list[str]
) -> dict[str, dict[str, Any]]:
    expanded = {}
    for name, props in model.queues.items():
        for domain in domains if terraform_model.DOMAIN in name else [""]:
            expanded[name.replace(terraform_model.DOMAIN, domain)] = {
                "session": bool(props.get("requires_session")),
                "dedup": bool(props.get("requires_duplicate_detection")),
                "dedup_window": seconds(props.get("duplicate_detection_history_time_window"))
                if props.get("requires_duplicate_detection")
                else None,
                "ttl": seconds(props.get("default_message_ttl")),
                "dlq_on_expiry": bool(props.get("dead_lettering_on_message_expiration")),
                "max_delivery": props.get("max_delivery_count"),
                "lock": seconds(props.get("lock_duration")),
            }
    return expanded


def scope(kind: str, name: str) -> tuple[str, str]:
    """An entity as both sides can name it: singletons by kind alone."""
    return (kind, "" if kind in SINGLETONS else name)


def bicep_grants(model: bicep_model.Model) -> set[tuple[str, str, tuple[str, str]]]:
    return {
        (a.principal_kind, a.role, scope(a.scope.kind, a.scope.name))
        for a in model.role_assignments
    }


def terraform_grants(
    model: terraform_model.TerraformModel, domains: list[str]
) -> set[tuple[str, str, tuple[str, str]]]:
    return {
        (principal, terraform_model.ROLE_IDS[role], scope(entity.kind, entity.name))
        for principal, role, entity in terraform_model.grants(model, domains)
        if principal != "deployer"  # azurerm writes secrets and tables on the data plane
    }


def code_settings(sources: list[Path]) -> set[str]:
    """The app setting names the given source files read (as the unit contract test scans)."""
    return {name for path in sources for name in NAME.findall(path.read_text())}


def missing_settings(read: set[str], deployed: set[str], local_only: set[str]) -> set[str]:
    """Settings the code reads that a deployment neither sets nor declares local-only."""
    return read - deployed - local_only


class TestParity:
    def test_the_same_queues_with_the_same_properties(
        self,
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
        domains: list[str],
    ) -> None:
        """Each queue exists in both, with the same sessions, duplicate detection, TTL,
        dead-lettering, delivery count and lock."""
        assert bicep_queues(bicep) == terraform_queues(terraform, domains)

    def test_the_same_roles_on_the_same_entities(
        self,
        bicep: bicep_model.Model,
        terraform: terraform_model.TerraformModel,
        domains: list[str],
    ) -> None:
        """The Function and the relays hold the same roles on the same entities in both."""
        assert bicep_grants(bicep) == terraform_grants(terraform, domains)

    def test_the_same_app_settings_and_local_only_list(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """Both set the same app settings (Terraform also blanks the provider's key-based
        AzureWebJobsStorage) and declare the same settings local-only."""
        terraform_settings = {
            name for name, kind in terraform.app_settings.items() if kind != "empty"
        }
        assert set(bicep.app_settings) == terraform_settings
        assert set(bicep.variables["localOnlySettings"]) == set(terraform.local_only_settings)

    def test_the_same_storage_redundancy(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """The audit table's account is zone- and geo-redundant in both."""
        bicep_sku = bicep.one("Microsoft.Storage/storageAccounts").body["sku"]["name"]
        (account,) = terraform.resources["azurerm_storage_account"].values()
        assert bicep_sku == f"Standard_{account['account_replication_type']}"


class TestSettingsContract:
    SOURCES = (*sorted((ROOT / "writeback" / "cloud").glob("*.py")), ROOT / "function_app.py")

    def test_every_setting_the_code_reads_is_deployed_by_both(
        self, bicep: bicep_model.Model, terraform: terraform_model.TerraformModel
    ) -> None:
        """What the cloud code reads, each deployment sets or declares local-only."""
        read = code_settings(list(self.SOURCES))
        assert "WRITEBACK_WAIT_SECONDS" in read  # the scan works
        local_only = set(terraform.local_only_settings)
        assert missing_settings(read, set(bicep.app_settings), local_only) == set()
        assert missing_settings(read, set(terraform.app_settings), local_only) == set()

    def test_a_setting_renamed_in_the_code_is_caught(
        self, tmp_path: Path, bicep: bicep_model.Model
    ) -> None:
        """A copy of the code that reads WRITEBACK_WAIT_SECS instead fails the contract."""
        renamed = tmp_path / "settings.py"
        source = (ROOT / "writeback" / "cloud" / "settings.py").read_text()
        renamed.write_text(re.sub(r'"WRITEBACK_WAIT_SECONDS"', '"WRITEBACK_WAIT_SECS"', source))
        sources = [renamed if p.name == "settings.py" else p for p in self.SOURCES]
        read = code_settings(sources)
        local_only = set(bicep.variables["localOnlySettings"])
        assert missing_settings(read, set(bicep.app_settings), local_only) == {
            "WRITEBACK_WAIT_SECS"
        }
