# The storage account: the Functions host's own storage, the Flex deployment package, the events
# Event Grid could not deliver, and the audit and agents tables. Shared keys are off, so only Entra ID identities with a data role
# reach it.

resource "azurerm_storage_account" "main" {
  #checkov:skip=CKV_AZURE_59:The Flex Consumption app has no virtual network here, so it reaches its storage over the public endpoint; shared keys are off, so only Entra ID identities with a data role get in
  #checkov:skip=CKV2_AZURE_33:A private endpoint needs virtual network integration of the Function App, which this deployment does not have (see CKV_AZURE_59)
  #checkov:skip=CKV_AZURE_33:Classic queue logging (queue_properties.logging) is written with the account key, which is disabled; an Azure Monitor diagnostic setting is the keyless way to log storage requests
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys: the account holds host state, the app package and audit records, never a password or key
  name                            = "st${var.name_prefix}${local.suffix}"
  location                        = local.location
  resource_group_name             = data.azurerm_resource_group.main.name
  account_kind                    = "StorageV2"
  account_tier                    = "Standard"
  account_replication_type        = "GZRS"
  https_traffic_only_enabled      = true
  min_tls_version                 = "TLS1_2"
  shared_access_key_enabled       = false
  default_to_oauth_authentication = true
  allow_nested_items_to_be_public = false

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }
}

# The Flex Consumption deployment package (the app's zip) lives here.
resource "azurerm_storage_container" "app_package" {
  #checkov:skip=CKV2_AZURE_21:The check wants azurerm_log_analytics_storage_insights, which reads the account key, and shared keys are disabled; an Azure Monitor diagnostic setting is the keyless way to log blob requests
  name                  = "app-package"
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# Event Grid writes the requests it could not deliver here, with the requests topic's identity
# (Storage Blob Data Contributor on this container only, roles.tf); an operator reads them.
resource "azurerm_storage_container" "eventgrid_deadletter" {
  #checkov:skip=CKV2_AZURE_21:The check wants azurerm_log_analytics_storage_insights, which reads the account key, and shared keys are disabled; an Azure Monitor diagnostic setting is the keyless way to log blob requests
  name                  = "eventgrid-deadletter"
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# azurerm 4.x creates tables through the data plane (storage_account_id arrives in 5.0), hence
# the deployer's table role (roles.tf), and the wait for it to reach the data plane.
resource "azurerm_storage_table" "audit" {
  #checkov:skip=CKV2_AZURE_20:The check wants azurerm_log_analytics_storage_insights, which reads the account key, and shared keys are disabled; an Azure Monitor diagnostic setting is the keyless way to log table requests
  name                 = "WritebackAudit"
  storage_account_name = azurerm_storage_account.main.name
  depends_on           = [time_sleep.deployer_roles_propagate]
}

resource "azurerm_storage_table" "agents" {
  #checkov:skip=CKV2_AZURE_20:The check wants azurerm_log_analytics_storage_insights, which reads the account key, and shared keys are disabled; an Azure Monitor diagnostic setting is the keyless way to log table requests
  name                 = "WritebackAgents"
  storage_account_name = azurerm_storage_account.main.name
  depends_on           = [time_sleep.deployer_roles_propagate]
}
