output "function_app_name" {
  description = "The Function App to publish function_app.py to."
  value       = azurerm_function_app_flex_consumption.main.name
}

output "function_app_hostname" {
  description = "The API's host name (https://<hostname>/api/v1/...)."
  value       = azurerm_function_app_flex_consumption.main.default_hostname
}

output "servicebus_namespace" {
  description = "The Service Bus namespace's host name, for the relays' configuration."
  value       = local.servicebus_fqdn
}

output "key_vault_uri" {
  description = "The vault holding the signing key and the relays' public keys."
  value       = azurerm_key_vault.main.vault_uri
}

output "request_queue_names" {
  description = "The request queue of each domain, for its relays' configuration."
  value       = [for queue in azurerm_servicebus_queue.requests : queue.name]
}

output "eventgrid_requests_topic_endpoint" {
  description = "Where portals publish Writeback.*.Requested CloudEvents (with EventGrid Data Sender on the topic)."
  value       = azurerm_eventgrid_topic.requests.endpoint
}

output "eventgrid_completed_topic_endpoint" {
  description = "The topic the function publishes Writeback.*.Completed CloudEvents to; portals subscribe to it."
  value       = azurerm_eventgrid_topic.completed.endpoint
}

output "eventhubs_namespace" {
  description = "The Event Hubs namespace's host name (the Entra ID audit stream)."
  value       = local.eventhubs_fqdn
}

output "audit_hub_name" {
  description = "The event hub Entra ID's diagnostic setting streams AuditLogs to."
  value       = azurerm_eventhub.entra_audit.name
}

output "entra_diagnostics_rule_id" {
  description = "The Send-only authorization rule the Entra ID diagnostic setting streams with (docs/deploy.md)."
  value       = azurerm_eventhub_namespace_authorization_rule.entra_diagnostics.id
}
