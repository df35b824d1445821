// The Entra ID audit stream: an Event Hubs namespace with one event hub, entra-audit, that the
// tenant's diagnostic setting (category AuditLogs) streams into, and the consumer group the
// entra_audit function reads with (Azure Event Hubs Data Receiver on this hub, function-access.bicep).
//
// Local (SAS) authentication stays ON here, unlike Service Bus, Key Vault and Event Grid: a
// diagnostic setting can stream to Event Hubs only through an authorization rule
// (eventHubAuthorizationRuleId); it has no Entra ID or managed-identity option, and it must be a
// namespace rule (a hub-level rule is refused). The one rule made here grants Send only, which
// suffices because the diagnostic setting names the event hub (only a setting without a hub name
// needs Manage and Listen). The function itself never uses a key: it signs in with its identity.
// (Azure Monitor's diagnostic settings docs, destination limits; MicrosoftDocs/azure-docs
// issues 119932 and 11140; Azure/azure-policy issue 995.)
// The namespace's built-in RootManageSharedAccessKey cannot be deleted; only identities allowed to
// list keys on the namespace (Owner, Contributor) can read it. docs/deploy.md explains the step
// in Entra ID and what a key holder could do.

param location string
param namespaceName string
param hubName string
param consumerGroupName string
param diagnosticsRuleName string

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    // Required by the diagnostic setting's authorization rule (see above).
    disableLocalAuth: false
    minimumTlsVersion: '1.2'
    // Entra ID's diagnostic settings cannot reach a namespace behind a firewall unless trusted
    // services are allowed, and the function has no virtual network.
    publicNetworkAccess: 'Enabled'
    isAutoInflateEnabled: false
  }
}

// Four partitions (fixed for the hub's life on Standard) let up to four instances read a large
// tenant's audit burst; a day of retention covers a restart or a short outage of the function.
resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: hubName
  properties: {
    partitionCount: 4
    messageRetentionInDays: 1
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroupName
}

resource diagnosticsSender 'Microsoft.EventHub/namespaces/authorizationRules@2024-01-01' = {
  parent: namespace
  name: diagnosticsRuleName
  properties: {
    rights: [
      'Send'
    ]
  }
}

output namespaceName string = namespace.name
// serviceBusEndpoint is https://<namespace>.<cloud's suffix>:443/; the SDK wants the bare host.
output fullyQualifiedNamespace string = first(split(replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), '/', ''), ':'))
output hubName string = hub.name
output consumerGroupName string = consumerGroup.name
output diagnosticsRuleId string = diagnosticsSender.id
