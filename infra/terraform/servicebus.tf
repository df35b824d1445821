# Service Bus: one request queue per AD domain (only that domain's relays receive from it), and
# the shared outcomes (one session per request) and heartbeats queues. devstack's
# writeback_queues gives the local broker the same sessions, time-to-live, duplicate detection
# and dead-lettering (a test compares them).

resource "azurerm_servicebus_namespace" "main" {
  #checkov:skip=CKV_AZURE_199:Double encryption needs Premium with a customer-managed key; the messages carry passwords only sealed end to end to the relays' keys (JWE)
  #checkov:skip=CKV_AZURE_201:Customer-managed keys need Premium; the messages are already sealed end to end (see CKV_AZURE_199)
  #checkov:skip=CKV_AZURE_202:A namespace identity is only used to read a customer-managed key, and there is none (see CKV_AZURE_201)
  #checkov:skip=CKV_AZURE_204:The on-premises relays connect out over the internet on port 443 by design; SAS is off, so only identities with a role on one queue get in
  name                = "sbns-${var.name_prefix}-${local.suffix}"
  location            = local.location
  resource_group_name = data.azurerm_resource_group.main.name
  sku                 = var.servicebus_sku
  # Premium is sold in messaging units and partitions; Standard takes neither.
  capacity                     = var.servicebus_sku == "Premium" ? 1 : 0
  premium_messaging_partitions = var.servicebus_sku == "Premium" ? 1 : 0
  # No SAS keys: every sender and receiver is an Entra ID identity with a role on one queue.
  local_auth_enabled  = false
  minimum_tls_version = "1.2"
}

# Requests expire with the request (10 minutes at most) and go to the dead-letter queue then;
# duplicate detection drops a resend of the same request id.
resource "azurerm_servicebus_queue" "requests" {
  for_each                                = local.domains
  name                                    = "writeback-requests-${each.key}"
  namespace_id                            = azurerm_servicebus_namespace.main.id
  requires_session                        = false
  requires_duplicate_detection            = true
  duplicate_detection_history_time_window = "PT10M"
  default_message_ttl                     = "PT10M"
  dead_lettering_on_message_expiration    = true
  max_delivery_count                      = 5
  lock_duration                           = "PT30S"
}

# The cloud waits on the session named after its request id.
resource "azurerm_servicebus_queue" "outcomes" {
  name                                 = "writeback-outcomes"
  namespace_id                         = azurerm_servicebus_namespace.main.id
  requires_session                     = true
  requires_duplicate_detection         = false
  default_message_ttl                  = "PT5M"
  dead_lettering_on_message_expiration = true
  max_delivery_count                   = 5
  lock_duration                        = "PT30S"
}

# A heartbeat is only worth its freshness: an expired one is dropped, not dead-lettered.
resource "azurerm_servicebus_queue" "heartbeats" {
  name                                 = "writeback-heartbeats"
  namespace_id                         = azurerm_servicebus_namespace.main.id
  requires_session                     = false
  requires_duplicate_detection         = false
  default_message_ttl                  = "PT5M"
  dead_lettering_on_message_expiration = false
  max_delivery_count                   = 5
  lock_duration                        = "PT30S"
}
