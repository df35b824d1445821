# Event-driven writeback: two Event Grid custom topics, both taking CloudEvents 1.0.
#   requests   portals and identity workflows publish Writeback.*.Requested events here; the
#              subscription below delivers them to the writeback_event function;
#   completed  the function publishes Writeback.*.Completed events here (its Event Grid output
#              binding, connection WritebackEvents); portals subscribe to tell the user.
# Two topics rather than one so that the right to send separates the two directions: whoever may
# ask for a reset (EventGrid Data Sender on requests) cannot announce an outcome, and the function,
# which announces outcomes, holds no role on requests. On a single topic every requester could
# forge Completed events for everyone else's users, and one filter mistake would feed the function
# its own outcomes. Access keys are off: publishing needs an Entra ID identity with EventGrid Data
# Sender on the one topic.
#
# Minimum TLS: infra/bicep sets minimumTlsVersionAllowed to 1.2 on both topics. No azurerm release
# up to 4.55 has an argument for it (hashicorp/terraform-provider-azurerm#30383; pull request
# #30708 is open); set it after apply as README.md shows, until a provider with it can be required
# here (tests/infra/test_terraform_schema.py then asks for it).

resource "azurerm_eventgrid_topic" "requests" {
  #checkov:skip=CKV_AZURE_193:The publishers are self-service portals and identity workflows outside Azure, and the function has no virtual network; access keys are off, so only an Entra ID identity with EventGrid Data Sender on this topic can publish
  name                          = "evgt-${var.name_prefix}-${local.suffix}-requests"
  location                      = local.location
  resource_group_name           = data.azurerm_resource_group.main.name
  input_schema                  = "CloudEventSchemaV1_0"
  local_auth_enabled            = false
  public_network_access_enabled = true

  # Event Grid writes undeliverable requests to the dead-letter container with this identity.
  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_eventgrid_topic" "completed" {
  #checkov:skip=CKV_AZURE_191:A topic identity only serves its own subscriptions' managed-identity delivery and dead-lettering; this deployment creates no subscription on this topic (the portals create theirs), so an identity would hold no role and do nothing
  #checkov:skip=CKV_AZURE_193:The Flex Consumption function publishes without a virtual network and the subscribing portals are outside Azure; access keys are off, so only an Entra ID identity with EventGrid Data Sender on this topic (the function's) can publish
  name                          = "evgt-${var.name_prefix}-${local.suffix}-completed"
  location                      = local.location
  resource_group_name           = data.azurerm_resource_group.main.name
  input_schema                  = "CloudEventSchemaV1_0"
  local_auth_enabled            = false
  public_network_access_enabled = true
}

# Event Grid checks that the function exists when the subscription is created, and a new Function
# App has no functions until the code is published: apply once, publish the code, then apply
# again with event_subscription_enabled = true.
#
# Delivery: CloudEvents 1.0, one event per call, only the Writeback.*.Requested types. A
# request carries a password sealed to the relays' keys and the user is waiting, so it is retried
# for ten minutes at most; then it goes to the dead-letter container (with the topic's identity:
# the account has no shared keys) and is never applied late.
resource "azurerm_eventgrid_event_subscription" "writeback_event" {
  count                 = var.event_subscription_enabled ? 1 : 0
  name                  = "writeback-event-function"
  scope                 = azurerm_eventgrid_topic.requests.id
  event_delivery_schema = "CloudEventSchemaV1_0"
  included_event_types = [
    "Writeback.PasswordReset.Requested",
    "Writeback.PasswordChange.Requested",
    "Writeback.AccountUnlock.Requested",
    "Writeback.PasswordExpire.Requested",
  ]

  azure_function_endpoint {
    function_id                       = "${azurerm_function_app_flex_consumption.main.id}/functions/writeback_event"
    max_events_per_batch              = 1
    preferred_batch_size_in_kilobytes = 64
  }

  retry_policy {
    max_delivery_attempts = 5
    event_time_to_live    = 10
  }

  dead_letter_identity {
    type = "SystemAssigned"
  }

  storage_blob_dead_letter_destination {
    storage_account_id          = azurerm_storage_account.main.id
    storage_blob_container_name = azurerm_storage_container.eventgrid_deadletter.name
  }

  depends_on = [azurerm_role_assignment.eventgrid_write_dead_letters]
}
