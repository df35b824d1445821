# Password writeback, cloud side: the Function App (Flex Consumption, Python) and what it uses:
# Service Bus queues to and from the on-premises relays, a Key Vault for the keys, a storage
# account for the Functions host and the audit and agents tables, Application Insights, Event
# Grid topics for event-driven requests and their outcomes, and an Event Hub for Entra ID's audit
# log. Everything authenticates with Entra ID; the one exception is the Send-only rule through
# which Entra ID's diagnostic setting streams into the audit Event Hub (eventhubs.tf).

data "azurerm_client_config" "current" {}

data "azurerm_resource_group" "main" {
  name = var.resource_group_name
}

locals {
  location = coalesce(var.location, data.azurerm_resource_group.main.location)
  # Globally unique names (storage, vault, namespace, app) carry a suffix that is stable for a
  # subscription and resource group, like Bicep's uniqueString(resourceGroup().id).
  suffix = substr(sha1(data.azurerm_resource_group.main.id), 0, 8)
  # The namespace's host name, from its endpoint (https://<name>.servicebus.windows.net:443/),
  # so that sovereign clouds get their own domain.
  servicebus_fqdn = regex("^https://([^:/]+)", azurerm_servicebus_namespace.main.endpoint)[0]
  # The Event Hubs namespace's host name. azurerm exports no endpoint for it, but Event Hubs and
  # Service Bus share the cloud's host suffix (servicebus.windows.net in Azure's public cloud).
  eventhubs_fqdn = "${azurerm_eventhub_namespace.main.name}.${regex("^[^.]+[.](.+)$", local.servicebus_fqdn)[0]}"
}
