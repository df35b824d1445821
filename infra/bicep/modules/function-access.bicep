// What the Function's identity may do, and nothing more: each role on the one entity it needs.
//   Service Bus   Data Sender on each domain's request queue; Data Receiver on outcomes (it waits
//                 on its own reply session); Data Owner on heartbeats, its trigger's queue: the
//                 scale controller reads the queue's message count, which needs the Manage claim
//                 that Data Receiver lacks (Functions Service Bus connections, scaling
//                 permissions; Azure Functions event-driven scaling); Data Sender on
//                 outcomes (an outcome that arrived after its caller gave up is re-sent, still
//                 signed by the relay, to the request's own session, where a status read finds it).
//   Key Vault     Secrets User on each secret this deployment writes (main.bicep's
//                 writtenSecretNames): the signing key, each domain's relay JWKS, the API keys.
//                 A role needs its secret to exist, so a secret managed outside the deployment
//                 gets its role there (docs/deploy.md#secrets-you-manage-yourself).
//   Storage       Table Data Contributor on each of its two tables; Blob Data Owner on the
//                 deployment container (Flex Consumption reads the package with the identity).
//                 The Functions host's own storage (AzureWebJobsStorage) is the exception: the
//                 host creates its containers (azure-webjobs-hosts, azure-webjobs-secrets) and
//                 queues itself at run time, under names it chooses, so Blob Data Owner and Queue
//                 Data Contributor can only be given on the account.
//   Monitoring    Metrics Publisher on Application Insights (local authentication is off there).
//   Event Hubs    Data Receiver on the entra-audit event hub (its trigger), not on the namespace.
//   Event Grid    Data Sender on the completed topic (its output binding publishes the
//                 Writeback.*.Completed events); none on the requests topic, whose subscription
//                 delivers to it.

param principalId string
param serviceBusNamespaceName string
param requestQueueNames array
param outcomesQueueName string
param heartbeatsQueueName string
param vaultName string
param secretNames array
param storageAccountName string
param deploymentContainerName string
param tableNames array
param applicationInsightsName string
param eventHubNamespaceName string
param auditHubName string
param completedTopicName string

var roles = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource requestQueues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = [for name in requestQueueNames: {
  parent: namespace
  name: name
}]

resource outcomesQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: outcomesQueueName
}

resource heartbeatsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: namespace
  name: heartbeatsQueueName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = [for name in secretNames: {
  parent: vault
  name: name
}]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deploymentContainerName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = [for name in tableNames: {
  parent: tableService
  name: name
}]

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

resource auditHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: eventHubNamespace
  name: auditHubName
}

resource completedTopic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: completedTopicName
}

resource sendRequests 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in requestQueueNames: {
  scope: requestQueues[i]
  name: guid(requestQueues[i].id, principalId, roles.serviceBusDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource receiveOutcomes 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: outcomesQueue
  name: guid(outcomesQueue.id, principalId, roles.serviceBusDataReceiver)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource resendOutcomes 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: outcomesQueue
  name: guid(outcomesQueue.id, principalId, roles.serviceBusDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource receiveHeartbeats 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: heartbeatsQueue
  name: guid(heartbeatsQueue.id, principalId, roles.serviceBusDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource readSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in secretNames: {
  scope: secrets[i]
  name: guid(secrets[i].id, principalId, roles.keyVaultSecretsUser)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource writeTables 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in tableNames: {
  scope: tables[i]
  name: guid(tables[i].id, principalId, roles.storageTableDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource readDeploymentPackage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: deploymentContainer
  name: guid(deploymentContainer.id, principalId, roles.storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource hostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, principalId, roles.storageBlobDataOwner)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource hostQueues 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: account
  name: guid(account.id, principalId, roles.storageQueueDataContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource publishTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: applicationInsights
  name: guid(applicationInsights.id, principalId, roles.monitoringMetricsPublisher)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource receiveAudit 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: auditHub
  name: guid(auditHub.id, principalId, roles.eventHubsDataReceiver)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource publishCompleted 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: completedTopic
  name: guid(completedTopic.id, principalId, roles.eventGridDataSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
