"""What a Flex Consumption function app must not be given: site properties and app settings that
the plan refuses or ignores, and a check of both deployments against them.

Source: Microsoft Learn, "App settings reference for Azure Functions", section "Flex Consumption
plan deprecations"
(https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations),
whose table first appeared in the Flex Consumption preview's "Deprecated properties and
settings"; each entry below gives the table's reason. Where the table writes `properties.X` for
what ARM keeps under `siteConfig` (alwaysOn, ftpsState, linuxFxVersion, ...), both places are
checked. The check never reaches Azure; it reads the Bicep and Terraform models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tests.infra.bicep_model import Resource

# Site properties (under `properties` or `properties.siteConfig`), with the table's reason.
DENIED_PROPERTIES = {
    "alwaysOn": "not valid",
    "containerSize": "renamed as functionAppConfig.scaleAndConcurrency.instanceMemoryMB",
    # Azure refuses it outright on a Flex site in newer regions (error 51021, issue 14).
    "ftpsState": "FTPS not supported",
    "functionAppScaleLimit": "renamed as scaleAndConcurrency.maximumInstanceCount",
    "isXenon": "not valid",
    "javaVersion": "replaced by functionAppConfig.runtime.version",
    "linuxFxVersion": "replaced by functionAppConfig.runtime",
    "netFrameworkVersion": "replaced by functionAppConfig.runtime.version",
    "powerShellVersion": "replaced by functionAppConfig.runtime.version",
    "preWarmedInstanceCount": "renamed as functionAppConfig.scaleAndConcurrency.alwaysReady",
    "reserved": "not valid (the table's isReserved: the plan says Linux, not the site)",
    "use32BitWorkerProcess": "32-bit not supported",
    "vnetBackupRestoreEnabled": "not used for networking in Flex Consumption",
    "vnetContentShareEnabled": "not used for networking in Flex Consumption",
    "vnetImagePullEnabled": "not used for networking in Flex Consumption",
    "vnetRouteAllEnabled": "not used for networking in Flex Consumption",
    "windowsFxVersion": "not valid",
}
# Not in the table, but the settings of other plans that Flex has no use for: the elastic
# (Premium) minimum, the Windows Consumption daily quota and the Windows-only Python version.
OTHER_PLANS_PROPERTIES = {
    "minimumElasticInstanceCount": "Premium plan's minimum; Flex uses alwaysReady",
    "dailyMemoryTimeQuota": "Windows Consumption plan's daily quota",
    "pythonVersion": "Windows sites' Python version; Flex uses functionAppConfig.runtime",
}
# App settings, with the table's reason.
DENIED_SETTINGS = {
    "ENABLE_ORYX_BUILD": "replaced by the remote build of the Flex deployment",
    "FUNCTIONS_EXTENSION_VERSION": "set by the platform",
    "FUNCTIONS_MAX_HTTP_CONCURRENCY": "replaced by scaleAndConcurrency.triggers.http",
    "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED": "not valid",
    "FUNCTIONS_WORKER_PROCESS_COUNT": "not valid",
    "FUNCTIONS_WORKER_RUNTIME": "replaced by functionAppConfig.runtime.name",
    "FUNCTIONS_WORKER_RUNTIME_VERSION": "replaced by functionAppConfig.runtime.version",
    "FUNCTIONS_WORKER_SHARED_MEMORY_DATA_TRANSFER_ENABLED": "not valid",
    "MACHINEKEY_DecryptionKey": "not valid",
    "SCM_DO_BUILD_DURING_DEPLOYMENT": "replaced by the remote build of the Flex deployment",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "replaced by functionAppConfig.deployment",
    "WEBSITE_CONTENTOVERVNET": "not used for networking in Flex Consumption",
    "WEBSITE_CONTENTSHARE": "replaced by functionAppConfig.deployment",
    "WEBSITE_DNS_SERVER": "DNS comes from the integrated virtual network",
    "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT": "replaced by maximumInstanceCount",
    "WEBSITE_NODE_DEFAULT_VERSION": "replaced by functionAppConfig.runtime.version",
    "WEBSITE_RUN_FROM_PACKAGE": "not used for deployments in Flex Consumption",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": "no content share in Flex Consumption",
    "WEBSITE_VNET_ROUTE_ALL": "not used for networking in Flex Consumption",
}
# azurerm's names, in azurerm_function_app_flex_consumption's site_config, for denied
# properties it spells differently from snake case.
TERRAFORM_SITE_CONFIG = {
    "use_32_bit_worker": "use32BitWorkerProcess",
    "elastic_instance_minimum": "minimumElasticInstanceCount",
}
ALL_PROPERTIES = {**DENIED_PROPERTIES, **OTHER_PLANS_PROPERTIES}


def bicep_problems(resources: Iterable[Resource]) -> list[str]:
    """Each denied property or app setting given to a Microsoft.Web/sites resource."""
    found = []
    for site in resources:
        if site.type.lower() != "microsoft.web/sites" or site.existing:
            continue
        where = f"{site.file} {site.symbol}"
        properties = site.body.get("properties") or {}
        site_config = properties.get("siteConfig") or {}
        for path, values in (("properties", properties), ("properties.siteConfig", site_config)):
            found.extend(f"{where}: {path}.{n}: {reason}" for n, reason in _denied(values))
        names = {entry["name"]: None for entry in site_config.get("appSettings", [])}
        found.extend(f"{where}: app setting {n}: {reason}" for n, reason in _settings(names))
    return found


def terraform_problems(resources: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Each denied property (in azurerm's spelling) or app setting of a Flex Consumption app."""
    found = []
    for name, app in resources.get("azurerm_function_app_flex_consumption", {}).items():
        where = f"azurerm_function_app_flex_consumption.{name}"
        for block, body in [("", app), *(("site_config.", b) for b in app.get("site_config", []))]:
            for key in body:
                denied = _denied({TERRAFORM_SITE_CONFIG.get(key, _camel(key)): None})
                found.extend(f"{where}: {block}{key}: {reason}" for _, reason in denied)
        settings = app.get("app_settings", {})
        found.extend(f"{where}: app setting {n}: {reason}" for n, reason in _settings(settings))
    return found


def _denied(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    by_lower = {name.lower(): (name, reason) for name, reason in ALL_PROPERTIES.items()}
    return [by_lower[key.lower()] for key in values if key.lower() in by_lower]


def _settings(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    # App setting names are case-insensitive (environment variables on Windows, ARM's own
    # comparison), so FUNCTIONS_worker_runtime is as refused as FUNCTIONS_WORKER_RUNTIME.
    by_lower = {name.lower(): reason for name, reason in DENIED_SETTINGS.items()}
    return [(key, by_lower[key.lower()]) for key in values if key.lower() in by_lower]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
