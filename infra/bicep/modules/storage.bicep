// The Function's storage account: the Functions host's own state (AzureWebJobsStorage), the Flex
// Consumption deployment package (blob container app-package), the events Event Grid could not
// deliver (blob container eventgrid-deadletter) and the two tables the code writes (audit records
// and relay heartbeats). Shared keys are off: every caller uses Entra ID.

param location string
param accountName string
param deploymentContainerName string
param deadLetterContainerName string
param tableNames array

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: accountName
  location: location
  kind: 'StorageV2'
  sku: {
    // Zone- and geo-redundant: the audit records outlive a zone's and a region's loss.
    name: 'Standard_GZRS'
  }
  //checkov:skip=CKV_AZURE_43:The name is 'st' + namePrefix (3-11 lower-case letters or digits) + 8 characters of uniqueString(), at most 21 lower-case letters and digits; checkov cannot evaluate a module parameter (tests/infra checks the rule with an 11-character prefix).
  //checkov:skip=CKV_AZURE_35:Flex Consumption without virtual network integration reaches its host storage over the public endpoint; access needs an Entra ID identity with a data role (shared keys are off).
  //checkov:skip=CKV_AZURE_59:Same reason: the Function App is not in a virtual network, so the account keeps its public endpoint; shared keys and anonymous blob access are off.
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  // A deleted blob or container (the app package, dead-lettered events) can be restored for a
  // week, as infra/terraform sets it.
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Written by the Event Grid requests topic's identity (eventgrid.bicep), read by an operator.
resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for name in tableNames: {
  parent: tableService
  name: name
}]

output accountName string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
