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

# The app registrations: created here (create_app_registration), or the values given by hand.
output "auth_tenant_id" {
  description = "The tenant whose tokens the API accepts (WRITEBACK_AUTH_TENANT_ID)."
  value       = local.auth_tenant_id
}

output "auth_audiences" {
  description = "The audiences the API accepts (WRITEBACK_AUTH_AUDIENCES)."
  value       = local.auth_audiences
}

output "api_client_id" {
  description = "The API app registration's client id; empty when create_app_registration is false."
  value       = var.create_app_registration ? azuread_application.api["main"].client_id : ""
}

output "api_identifier_uri" {
  description = "The API's identifier URI (scopes are <uri>/Writeback.Self); empty when create_app_registration is false."
  value       = var.create_app_registration ? local.identifier_uri : ""
}

output "pages_client_id" {
  description = "The self-service pages' SPA client id (WRITEBACK_PAGES_CLIENT_ID)."
  value       = local.pages_client_id
}

output "pages_redirect_uri" {
  description = "The pages' sign-in redirect URI, registered on their SPA app registration."
  value       = local.pages_redirect
}

output "admin_client_id" {
  description = "The admin client's client id, which `writeback login --auth device-code` (or browser) signs in with (WRITEBACK_CLIENT_ID); empty when create_app_registration is false."
  value       = var.create_app_registration ? azuread_application.admin_client["main"].client_id : ""
}
