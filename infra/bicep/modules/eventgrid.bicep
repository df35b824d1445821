// Event-driven writeback: two Event Grid custom topics, both taking CloudEvents 1.0.
//   requests   portals and identity workflows publish Writeback.*.Requested events here, and the
//              subscription in eventgrid-subscription.bicep delivers them to the writeback_event
//              function;
//   completed  the function publishes Writeback.*.Completed events here (its Event Grid output
//              binding, connection WritebackEvents); portals subscribe to tell the user.
// Two topics rather than one so that the right to send separates the two directions: whoever may
// ask for a reset (EventGrid Data Sender on requests) cannot announce an outcome, and the
// function, which announces outcomes, holds no role on requests. On a single topic every
// requester could forge Completed events for everyone else's users, and one filter mistake would
// feed the function its own outcomes.
//
// Access keys are off: a publisher needs an Entra ID identity with EventGrid Data Sender on the
// one topic. Publishers must use TLS 1.2 or later.

param location string
param requestsTopicName string
param completedTopicName string
param storageAccountName string
param deadLetterContainerName string

var roles = {
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
}

resource requestsTopic 'Microsoft.EventGrid/topics@2025-02-15' = {
  name: requestsTopicName
  location: location
  // Event Grid writes undeliverable requests to the dead-letter container with this identity.
  identity: {
    type: 'SystemAssigned'
  }
  //checkov:skip=CKV_AZURE_193:The publishers are self-service portals and identity workflows outside Azure, and the function has no virtual network; access keys are off, so only an Entra ID identity with EventGrid Data Sender on this topic can publish.
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource completedTopic 'Microsoft.EventGrid/topics@2025-02-15' = {
  name: completedTopicName
  location: location
  //checkov:skip=CKV_AZURE_191:A topic identity only serves its own subscriptions' managed-identity delivery and dead-lettering; this deployment creates no subscription on this topic (the portals create theirs), so an identity would hold no role and do nothing.
  //checkov:skip=CKV_AZURE_193:The Flex Consumption function publishes without a virtual network and the subscribing portals are outside Azure; access keys are off, so only an Entra ID identity with EventGrid Data Sender on this topic (the function's) can publish.
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

// Created by storage.bicep, which this module follows.
resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

// The requests topic's identity may write dead letters into their one container, nothing else
// (the account refuses shared keys, so dead-lettering needs an identity with a data role).
resource writeDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: deadLetterContainer
  name: guid(deadLetterContainer.id, requestsTopic.id, roles.storageBlobDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: requestsTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output requestsTopicName string = requestsTopic.name
output completedTopicName string = completedTopic.name
output requestsTopicEndpoint string = requestsTopic.properties.endpoint
output completedTopicEndpoint string = completedTopic.properties.endpoint
