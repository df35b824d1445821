# Logs and telemetry. Application Insights accepts Entra ID-authenticated ingestion only; the
# Function App's identity holds Monitoring Metrics Publisher on it (roles.tf).

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${var.name_prefix}-${local.suffix}"
  location            = local.location
  resource_group_name = data.azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = 90
}

resource "azurerm_application_insights" "main" {
  name                          = "appi-${var.name_prefix}-${local.suffix}"
  location                      = local.location
  resource_group_name           = data.azurerm_resource_group.main.name
  workspace_id                  = azurerm_log_analytics_workspace.main.id
  application_type              = "web"
  local_authentication_disabled = true
}
