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
