# The Entra ID audit stream: an Event Hubs namespace with one event hub, entra-audit, that the
# tenant's diagnostic setting (category AuditLogs) streams into, and the consumer group the
# entra_audit function reads with (Azure Event Hubs Data Receiver on this hub, roles.tf).
#
# Local (SAS) authentication stays ON here, unlike Service Bus, Key Vault and Event Grid: a
# diagnostic setting can stream to Event Hubs only through an authorization rule
# (eventHubAuthorizationRuleId); it has no Entra ID or managed-identity option, and it must be a
# namespace rule (a hub-level rule is refused). The one rule made here grants Send only, which
# suffices because the diagnostic setting names the event hub (only a setting without a hub name
# needs Manage and Listen). The function itself never uses a key: it signs in with its identity.
# (Azure Monitor's diagnostic settings docs, destination limits; MicrosoftDocs/azure-docs
# issues 119932 and 11140; Azure/azure-policy issue 995.)
# The namespace's built-in RootManageSharedAccessKey cannot be deleted; only identities allowed to
# list keys on the namespace (Owner, Contributor) can read it. docs/deploy.md explains the step
# in Entra ID and what a key holder could do.

resource "azurerm_eventhub_namespace" "main" {
  #checkov:skip=CKV_AZURE_228:Event Hubs makes a namespace zone-redundant by itself in regions with availability zones; the region is the operator's choice (var.location), which checkov cannot evaluate
  name                 = "evhns-${var.name_prefix}-${local.suffix}"
  location             = local.location
  resource_group_name  = data.azurerm_resource_group.main.name
  sku                  = "Standard"
  capacity             = 1
  auto_inflate_enabled = false
  # Required by the diagnostic setting's authorization rule (see above).
  local_authentication_enabled = true
  minimum_tls_version          = "1.2"
  # Entra ID's diagnostic settings cannot reach a namespace behind a firewall unless trusted
  # services are allowed, and the function has no virtual network.
  public_network_access_enabled = true
}

# Four partitions (fixed for the hub's life on Standard) let up to four instances read a large
# tenant's audit burst; a day of retention covers a restart or a short outage of the function.
resource "azurerm_eventhub" "entra_audit" {
  name              = "entra-audit"
  namespace_id      = azurerm_eventhub_namespace.main.id
  partition_count   = 4
  message_retention = 1
}

resource "azurerm_eventhub_consumer_group" "writeback" {
  name                = "writeback"
  namespace_name      = azurerm_eventhub_namespace.main.name
  eventhub_name       = azurerm_eventhub.entra_audit.name
  resource_group_name = data.azurerm_resource_group.main.name
}

resource "azurerm_eventhub_namespace_authorization_rule" "entra_diagnostics" {
  name                = "entra-diagnostics-send"
  namespace_name      = azurerm_eventhub_namespace.main.name
  resource_group_name = data.azurerm_resource_group.main.name
  listen              = false
  send                = true
  manage              = false
}
