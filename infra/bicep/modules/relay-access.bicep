// What one domain's relays may do on Service Bus, and nothing more: receive that domain's
// requests (no other domain's), and send outcomes and heartbeats. A relay gets no role in Key
// Vault or storage: its keys are its own, on its host, and the cloud learns only their public
// halves from the JWKS secret an administrator registers.

param principalIds array
param serviceBusNamespaceName string
param requestQueueName string
param outcomesQueueName string
param heartbeatsQueueName string

var roles = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource requestQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: requestQueueName
}

resource outcomesQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: outcomesQueueName
}

resource heartbeatsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: heartbeatsQueueName
}

// Relays are service principals or Azure Arc machines' managed identities: both are
// service principals to Azure RBAC.
resource receiveRequests 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  scope: requestQueue
  name: guid(requestQueue.id, principalId, roles.serviceBusDataReceiver)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource sendOutcomes 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  scope: outcomesQueue
  name: guid(outcomesQueue.id, principalId, roles.serviceBusDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource sendHeartbeats 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  scope: heartbeatsQueue
  name: guid(heartbeatsQueue.id, principalId, roles.serviceBusDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]
