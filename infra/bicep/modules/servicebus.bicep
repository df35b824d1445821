// The wire between the cloud and the relays: one request queue per AD domain (so a relay only
// ever sees its own domain's requests), the outcomes queue (one session per request, so the
// waiting Function receives exactly its own outcome) and the heartbeats queue. Local (SAS key)
// authentication is off: only Entra ID identities with a role on a queue can use it.
// The queue properties match devstack/servicebus `writeback_queues`, which the tests run against.

param location string
param namespaceName string
param sku string
param requestQueueNames array
param outcomesQueueName string
param heartbeatsQueueName string

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  sku: {
    name: sku
    tier: sku
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

// A request lives at most as long as its lifetime (60 s by default); ten minutes of TTL and
// duplicate detection cover every retry of the same request id, and an expired request goes to
// the dead-letter queue for the admin instead of vanishing.
resource requestQueues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [for name in requestQueueNames: {
  parent: namespace
  name: name
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'PT10M'
    deadLetteringOnMessageExpiration: true
    maxDeliveryCount: 5
    lockDuration: 'PT30S'
  }
}]

resource outcomesQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: outcomesQueueName
  properties: {
    requiresSession: true
    defaultMessageTimeToLive: 'PT5M'
    deadLetteringOnMessageExpiration: true
    maxDeliveryCount: 5
    lockDuration: 'PT30S'
  }
}

resource heartbeatsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: heartbeatsQueueName
  properties: {
    defaultMessageTimeToLive: 'PT5M'
    maxDeliveryCount: 5
    lockDuration: 'PT30S'
  }
}

output namespaceName string = namespace.name
// serviceBusEndpoint is https://<namespace>.<cloud's suffix>:443/; the SDK wants the bare host.
output fullyQualifiedNamespace string = first(split(replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), '/', ''), ':'))
output requestQueueNames array = requestQueueNames
