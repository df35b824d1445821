# The Function App: Flex Consumption, Linux, Python, with a system-assigned identity that
# reaches the storage account, Service Bus, Key Vault, Application Insights, the completed Event
# Grid topic and the audit Event Hub through roles (roles.tf) and never through a key or
# connection string.

resource "azurerm_service_plan" "main" {
  #checkov:skip=CKV_AZURE_225:Flex Consumption zone redundancy exists only in some regions; it is left to the operator (zone_balancing_enabled)
  #checkov:skip=CKV_AZURE_212:Flex Consumption scales out on demand from zero (up to maximum_instance_count); a fixed instance minimum does not apply
  name                = "plan-${var.name_prefix}-${local.suffix}"
  location            = local.location
  resource_group_name = data.azurerm_resource_group.main.name
  sku_name            = "FC1"
  os_type             = "Linux"
}

resource "azurerm_function_app_flex_consumption" "main" {
  name                = "func-${var.name_prefix}-${local.suffix}"
  location            = local.location
  resource_group_name = data.azurerm_resource_group.main.name
  service_plan_id     = azurerm_service_plan.main.id
  # `azd deploy` finds the app of service `api` (azure.yaml) by this tag, as with infra/bicep.
  tags = {
    "azd-service-name" = "api"
  }

  storage_container_type      = "blobContainer"
  storage_container_endpoint  = "${azurerm_storage_account.main.primary_blob_endpoint}${azurerm_storage_container.app_package.name}"
  storage_authentication_type = "SystemAssignedIdentity"
  runtime_name                = "python"
  runtime_version             = var.python_version
  maximum_instance_count      = var.maximum_instance_count
  instance_memory_in_mb       = var.instance_memory_mb
  # HTTP calls one instance takes at once (functionAppConfig.scaleAndConcurrency.triggers.http,
  # as infra/bicep sets it): Python's default is 1, while each API call may wait up to
  # wait_seconds for its relay, almost all of it idle (docs/deploy.md#http-concurrency).
  http_concurrency = var.http_per_instance_concurrency

  https_only = true
  # Deployments authenticate with Entra ID; no publishing user name and password exist.
  webdeploy_publish_basic_authentication_enabled = false

  identity {
    type = "SystemAssigned"
  }

  # The Flex resource has no FTP at all, so there is no ftps_state to turn off.
  site_config {
    minimum_tls_version     = "1.2"
    scm_minimum_tls_version = "1.2"
    # The provider writes this as the APPLICATIONINSIGHTS_CONNECTION_STRING app setting (set
    # in app_settings instead, it would show as a change on every plan).
    application_insights_connection_string = azurerm_application_insights.main.connection_string
  }

  app_settings = {
    # azurerm 4.x writes AzureWebJobsStorage as a key-based connection string with an empty key
    # on every create and update unless app_settings gives the key; an exact setting beats the
    # identity-based AzureWebJobsStorage__* below, so "" must stay. The provider never reads the
    # key back into app_settings, so every plan shows this one setting being added: expected and
    # harmless (hashicorp/terraform-provider-azurerm#29149). Never put it in ignore_changes: the
    # next update would then send the provider's keyed string (docs/deploy.md#terraform).
    "AzureWebJobsStorage"                           = ""
    "AzureWebJobsStorage__accountName"              = azurerm_storage_account.main.name
    "AzureWebJobsStorage__blobServiceUri"           = azurerm_storage_account.main.primary_blob_endpoint
    "AzureWebJobsStorage__queueServiceUri"          = azurerm_storage_account.main.primary_queue_endpoint
    "AzureWebJobsStorage__tableServiceUri"          = azurerm_storage_account.main.primary_table_endpoint
    "ServiceBusConnection__fullyQualifiedNamespace" = local.servicebus_fqdn
    "WRITEBACK_DOMAINS"                             = join(",", [for d in var.domains : d.name])
    "WRITEBACK_UPN_SUFFIXES"                        = var.upn_suffixes
    "WRITEBACK_WAIT_SECONDS"                        = tostring(var.wait_seconds)
    "WRITEBACK_REQUEST_LIFETIME_SECONDS"            = tostring(var.request_lifetime_seconds)
    "WRITEBACK_HEARTBEAT_INTERVAL_SECONDS"          = tostring(var.heartbeat_interval_seconds)
    "WRITEBACK_AUDIT_TABLE"                         = azurerm_storage_table.audit.name
    "WRITEBACK_AGENTS_TABLE"                        = azurerm_storage_table.agents.name
    "WRITEBACK_KEYVAULT_URL"                        = azurerm_key_vault.main.vault_uri
    "WRITEBACK_KEYS_REFRESH_SECONDS"                = "300"
    "WRITEBACK_AUTH_TENANT_ID"                      = local.auth_tenant_id
    "WRITEBACK_AUTH_AUDIENCES"                      = local.auth_audiences
    # The self-service pages' SPA client id, for MSAL.js; empty: no pages.
    "WRITEBACK_PAGES_CLIENT_ID" = local.pages_client_id
    # A Key Vault reference: the platform resolves it with the app's identity, so the keys
    # never appear in the app's configuration.
    "WRITEBACK_API_KEYS"      = var.api_keys_enabled ? "@Microsoft.KeyVault(VaultName=${azurerm_key_vault.main.name};SecretName=writeback-api-keys)" : ""
    "WRITEBACK_API_KEY_ROLES" = join(",", var.api_key_roles)
    # The strong verification a signed-in user's reset of the user's own password needs.
    "WRITEBACK_SELF_SERVICE_ACRS"               = join(",", var.self_service_acrs)
    "WRITEBACK_SELF_SERVICE_AMR"                = join(",", var.self_service_amr)
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" = "Authorization=AAD"
    # One telemetry pipeline (host.json telemetryMode OpenTelemetry): the Python worker sets up
    # the Azure Monitor distro and runs each invocation in the host's trace.
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" = "true"
    "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"      = "writeback"
    # On Python 3.11/3.12 the app's pinned packages (requirements.txt: azure-functions and the
    # rest) load ahead of the worker's bundled copies (docs/deploy.md#python-packages). The
    # Event Grid trigger no longer depends on it: it takes the event as its JSON text, which
    # every azure-functions release decodes alike.
    "PYTHON_ISOLATE_WORKER_DEPENDENCIES" = "1"
    # The host's diagnostic-events tables (AzureFunctionsDiagnosticEvents*) hold no role here.
    "AzureWebJobsFeatureFlags" = "DisableDiagnosticEventLogging"
    # The Event Grid output binding (connection WritebackEvents) publishes Completed events to
    # the completed topic, and the Event Hubs trigger (connection EntraAuditHub) reads the audit
    # stream, both with the app's identity.
    "WritebackEvents__topicEndpointUri"      = azurerm_eventgrid_topic.completed.endpoint
    "EntraAuditHub__fullyQualifiedNamespace" = local.eventhubs_fqdn
    "WRITEBACK_AUDIT_HUB"                    = azurerm_eventhub.entra_audit.name
    "WRITEBACK_AUDIT_CONSUMER_GROUP"         = azurerm_eventhub_consumer_group.writeback.name
    "WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE" = tostring(var.unlock_on_entra_self_service)
    "WRITEBACK_DRIFT_WINDOW_SECONDS"         = tostring(var.drift_window_seconds)
    "WRITEBACK_DRIFT_FORCE_CHANGE"           = tostring(var.drift_force_change)
    "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS"  = join(",", var.microsoft_writeback_domains)
    # The sweeper's timer (NCRONTAB): adopts the reply sessions of instances that are gone.
    "WRITEBACK_SWEEP_SCHEDULE" = "0 */1 * * * *"
  }
}
