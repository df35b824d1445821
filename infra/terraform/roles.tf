# Who may do what, least privilege. Every data-plane role is scoped to the one entity it is
# for (a queue, a secret, a table, a container), never to the namespace, vault or account,
# except where the entity cannot exist beforehand; each such exception says why. Service Bus
# access alone cannot reset a password: requests are signed by the cloud and sealed to the
# relays' keys, outcomes signed by the relays.

# -- The Function App's identity -------------------------------------------------------------

# It sends each domain's requests ...
resource "azurerm_role_assignment" "function_send_requests" {
  for_each             = local.domains
  scope                = azurerm_servicebus_queue.requests[each.key].id
  role_definition_name = "Azure Service Bus Data Sender"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# ... and receives the outcomes and the heartbeats.
resource "azurerm_role_assignment" "function_receive_outcomes" {
  scope                = azurerm_servicebus_queue.outcomes.id
  role_definition_name = "Azure Service Bus Data Receiver"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# It re-sends an outcome that arrived after its caller gave up (still signed by the relay) to the
# request's own session, where a status read on any instance finds it.
resource "azurerm_role_assignment" "function_resend_outcomes" {
  scope                = azurerm_servicebus_queue.outcomes.id
  role_definition_name = "Azure Service Bus Data Sender"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# Heartbeats reach it through a Service Bus trigger, whose scale monitoring reads the queue's
# message count: that needs the Manage claim, which Data Receiver lacks. Data Owner, on this one
# queue only, is the narrowest built-in role with it (Functions Service Bus connections, scaling
# permissions).
resource "azurerm_role_assignment" "function_receive_heartbeats" {
  scope                = azurerm_servicebus_queue.heartbeats.id
  role_definition_name = "Azure Service Bus Data Owner"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# It reads each secret it uses, one by one (scope: the secret's versionless resource ID).
resource "azurerm_role_assignment" "function_read_signing_key" {
  count                = local.create_signing_key_secret ? 1 : 0
  scope                = azurerm_key_vault_secret.signing_key[0].resource_versionless_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "function_read_relay_keys" {
  for_each             = local.relay_jwks_domains
  scope                = azurerm_key_vault_secret.relay_keys[each.key].resource_versionless_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "function_read_api_keys" {
  count                = local.create_api_keys_secret ? 1 : 0
  scope                = azurerm_key_vault_secret.api_keys[0].resource_versionless_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# It writes the audit records and the relays' last heartbeats.
resource "azurerm_role_assignment" "function_write_audit_table" {
  scope                = azurerm_storage_table.audit.resource_manager_id
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "function_write_agents_table" {
  scope                = azurerm_storage_table.agents.resource_manager_id
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# The platform fetches the deployment package with the app's identity. (The container was
# created through Resource Manager, so its `id` is its Resource Manager ID.)
resource "azurerm_role_assignment" "function_read_package" {
  scope                = azurerm_storage_container.app_package.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# The Functions host keeps its own state in AzureWebJobsStorage: blob containers it creates at
# run time (azure-webjobs-hosts for locks and timers, azure-webjobs-secrets for its keys) and
# queues it creates for its own use. They do not exist before the host starts and their names
# are the host's, so these two roles can only be scoped to the account.
resource "azurerm_role_assignment" "function_host_blobs" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "function_host_queues" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Queue Data Contributor"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# Application Insights takes Entra ID-authenticated telemetry only.
resource "azurerm_role_assignment" "function_publish_telemetry" {
  scope                = azurerm_application_insights.main.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# It reads the Entra ID audit stream: the one event hub, not the namespace.
resource "azurerm_role_assignment" "function_receive_audit" {
  scope                = azurerm_eventhub.entra_audit.id
  role_definition_name = "Azure Event Hubs Data Receiver"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# It publishes Writeback.*.Completed events to the completed topic; it has no role on the
# requests topic, whose subscription delivers to it.
resource "azurerm_role_assignment" "function_publish_completed" {
  scope                = azurerm_eventgrid_topic.completed.id
  role_definition_name = "EventGrid Data Sender"
  principal_id         = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# -- The Event Grid requests topic's identity ------------------------------------------------

# It writes the requests Event Grid could not deliver into their one container (the account has
# no shared keys, so dead-lettering needs an identity with a data role).
resource "azurerm_role_assignment" "eventgrid_write_dead_letters" {
  scope                = azurerm_storage_container.eventgrid_deadletter.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_eventgrid_topic.requests.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

# -- Each domain's relays --------------------------------------------------------------------

# A relay receives its own domain's requests, and no other domain's.
resource "azurerm_role_assignment" "relay_receive_requests" {
  for_each             = local.relay_grants
  scope                = azurerm_servicebus_queue.requests[each.value.domain].id
  role_definition_name = "Azure Service Bus Data Receiver"
  principal_id         = each.value.principal_id
  principal_type       = "ServicePrincipal"
}

# It sends outcomes and heartbeats (signed by its own key, so it cannot speak for another).
resource "azurerm_role_assignment" "relay_send_outcomes" {
  for_each             = local.relay_principals
  scope                = azurerm_servicebus_queue.outcomes.id
  role_definition_name = "Azure Service Bus Data Sender"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "relay_send_heartbeats" {
  for_each             = local.relay_principals
  scope                = azurerm_servicebus_queue.heartbeats.id
  role_definition_name = "Azure Service Bus Data Sender"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}

# -- Whoever runs Terraform ------------------------------------------------------------------

# azurerm writes secrets and creates tables through the data plane (Bicep does both through
# Resource Manager and needs neither role; azurerm 4.x has no Resource Manager table resource,
# `storage_account_id` arrives in 5.0). The secrets and tables do not exist before this
# deployment creates them, so the roles are scoped to the vault and the account.
resource "azurerm_role_assignment" "deployer_write_secrets" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_role_assignment" "deployer_create_tables" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = data.azurerm_client_config.current.object_id
}

# A new role assignment takes minutes to reach the data planes (Azure RBAC troubleshooting:
# "role assignment changes are not being detected", up to 10 minutes). The secrets and tables
# wait for it, so the first apply is not refused with 403; a re-created assignment waits again.
resource "time_sleep" "deployer_roles_propagate" {
  create_duration = "300s"

  triggers = {
    write_secrets = azurerm_role_assignment.deployer_write_secrets.id
    create_tables = azurerm_role_assignment.deployer_create_tables.id
  }
}
