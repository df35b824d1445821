// Writeback, the cloud side: the Azure Function that takes password operations, the Service Bus
// queues that carry them to the on-premises relays, the Key Vault holding the keys, the Event Grid
// topics that carry event-driven requests in and their outcomes out, the Event Hub that receives
// Entra ID's audit log, and the storage and monitoring the Function needs. Deploy into a resource
// group:
//
//   az deployment group create -g <group> -f infra/bicep/main.bicep -p @main.parameters.json
//
// The Event Grid subscription to the function can only be created once the code is published
// (Event Grid checks that the function exists): deploy, publish, then deploy again with
// eventSubscriptionEnabled=true.
//
// infra/terraform/ declares the same resources from the same contract (names, settings, roles);
// tests/infra checks both, and that they agree. Every identity gets the narrowest role on the
// narrowest scope: a Service Bus role on one queue, a Key Vault role on one secret, a table role
// on one table. A relay can read only its own domain's requests.

@description('Short prefix for resource names: 3 to 11 lower-case letters or digits.')
@minLength(3)
@maxLength(11)
param namePrefix string

@description('Azure region of every resource.')
param location string = resourceGroup().location

@minLength(1)
@description('The AD domains, each with the object ids of its relays\' identities (service principals or Azure Arc machines\' managed identities): [{ name: \'corp.example.com\', relayPrincipalIds: [\'<object id>\'] }].')
param domains array

@description('Service Bus tier. Sessions and duplicate detection need Standard or Premium.')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Entra ID tenant whose tokens the API accepts; empty turns bearer tokens off.')
param authTenantId string = ''

@description('Accepted token audiences, comma separated (the API app registration\'s client id or Application ID URI).')
param authAudiences string = ''

@description('Accept API keys (x-functions-key) besides Entra ID tokens; the keys live in Key Vault secret writeback-api-keys.')
param apiKeysEnabled bool = false

@description('UPN suffix to domain routes beyond each domain\'s own name, e.g. \'example.com=corp.example.com\'.')
param upnSuffixes string = ''

@description('A relay whose last heartbeat is older than this many seconds counts as unavailable.')
@minValue(1)
@maxValue(3600)
param heartbeatIntervalSeconds int = 60

@description('How long an HTTP call waits for the outcome before answering "pending"; at most requestLifetimeSeconds.')
@minValue(1)
@maxValue(200)
param waitSeconds int = 25

@description('How long a request stays valid; the relay refuses it afterwards.')
@minValue(5)
@maxValue(600)
param requestLifetimeSeconds int = 60

@description('Python version of the Function App.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Flex Consumption: the most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: memory per instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Unlock the AD account when Entra ID\'s audit log reports "Unlock user account (self-service)" for a user of a writeback domain.')
param unlockOnEntraSelfService bool = false

@description('A password reset or change in Entra ID with no writeback request for that user within this many seconds is recorded as drift.')
@minValue(1)
@maxValue(86400)
param driftWindowSeconds int = 300

@description('On drift, also set "must change password at next logon" in AD, so that the cloud and AD passwords cannot silently differ.')
param driftForceChange bool = false

@description('Create the Event Grid subscription that delivers writeback requests to the writeback_event function. Event Grid refuses it until the code is published: deploy once, publish, then deploy again with true.')
param eventSubscriptionEnabled bool = false

@description('The cloud\'s private signing key (JWK JSON). Empty leaves secret writeback-cloud-signing-key as it is; it must exist before the Function can start.')
@secure()
param cloudSigningKey string = ''

@description('Relay public keys: domain name -> JWKS JSON string. A domain left out keeps its secret as it is (rotation happens in Key Vault, see docs/keys.md).')
@secure()
param relayJwks object = {}

@description('The app roles an API key caller has (Writeback.Reset.SelfService, Writeback.Reset.Admin, Writeback.Change, Writeback.Unlock, Writeback.Expire, Writeback.Read). Empty: every role. Grant a portal\'s key only what it calls.')
param apiKeyRoles array = []

@description('The API keys (secret writeback-api-keys) when apiKeysEnabled. Empty leaves the secret as it is.')
@secure()
param apiKeys string = ''

// Settings the code reads but Azure must not set. The connection strings and the secrets
// directory are the local stack's way in (Azure uses the identity-based `__` settings and Key
// Vault); WRITEBACK_AUTH_JWKS_URL points token checks at a test issuer (Azure uses the tenant's);
// Flex Consumption takes the runtime from
// functionAppConfig, not from FUNCTIONS_WORKER_RUNTIME. Nothing reads this list at deployment
// time: tests/infra uses it to tell "deliberately absent" from "forgotten".
#disable-next-line no-unused-vars
var localOnlySettings = [
  'AzureWebJobsStorage'
  'ServiceBusConnection'
  'WRITEBACK_SECRETS_DIR'
  'WRITEBACK_AUTH_JWKS_URL'
  'FUNCTIONS_WORKER_RUNTIME'
]

var resourceToken = toLower(uniqueString(resourceGroup().id, namePrefix))
var domainNames = [for domain in domains: domain.name]

// Entity names are a contract with the code (writeback/transport, writeback/cloud/secrets.py).
var outcomesQueueName = 'writeback-outcomes'
var heartbeatsQueueName = 'writeback-heartbeats'
var requestQueueNames = [for domain in domains: 'writeback-requests-${toLower(domain.name)}']
var signingKeySecretName = 'writeback-cloud-signing-key'
// '-' doubled first, then '.' as '-': corp.example.com and corp-example.com never share a secret.
var relayKeysSecretNames = [for domain in domains: 'writeback-relays-${replace(replace(toLower(domain.name), '-', '--'), '.', '-')}']
var apiKeysSecretName = 'writeback-api-keys'
var auditTableName = 'WritebackAudit'
var agentsTableName = 'WritebackAgents'
var deploymentContainerName = 'app-package'
// Event-driven writeback and the Entra ID audit stream (function_app.py's writeback_event and
// entra_audit functions read these).
var eventFunctionName = 'writeback_event'
var requestedEventTypes = [
  'Writeback.PasswordReset.Requested'
  'Writeback.PasswordChange.Requested'
  'Writeback.AccountUnlock.Requested'
  'Writeback.PasswordExpire.Requested'
]
var deadLetterContainerName = 'eventgrid-deadletter'
var auditHubName = 'entra-audit'
var auditConsumerGroupName = 'writeback'
var entraDiagnosticsRuleName = 'entra-diagnostics-send'

module monitoring 'modules/monitoring.bicep' = {
  name: 'writeback-monitoring'
  params: {
    location: location
    workspaceName: 'log-${namePrefix}-${resourceToken}'
    applicationInsightsName: 'appi-${namePrefix}-${resourceToken}'
  }
}

module storage 'modules/storage.bicep' = {
  name: 'writeback-storage'
  params: {
    location: location
    accountName: 'st${namePrefix}${take(resourceToken, 11)}'
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    tableNames: [
      auditTableName
      agentsTableName
    ]
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'writeback-servicebus'
  params: {
    location: location
    namespaceName: 'sbns-${namePrefix}-${resourceToken}'
    sku: serviceBusSku
    requestQueueNames: requestQueueNames
    outcomesQueueName: outcomesQueueName
    heartbeatsQueueName: heartbeatsQueueName
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'writeback-eventgrid'
  params: {
    location: location
    requestsTopicName: 'evgt-${namePrefix}-${resourceToken}-requests'
    completedTopicName: 'evgt-${namePrefix}-${resourceToken}-completed'
    storageAccountName: storage.outputs.accountName
    deadLetterContainerName: deadLetterContainerName
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'writeback-eventhubs'
  params: {
    location: location
    namespaceName: 'evhns-${namePrefix}-${resourceToken}'
    hubName: auditHubName
    consumerGroupName: auditConsumerGroupName
    diagnosticsRuleName: entraDiagnosticsRuleName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'writeback-keyvault'
  params: {
    location: location
    vaultName: 'kv-${namePrefix}-${take(resourceToken, 8)}'
    domainNames: domainNames
    signingKeySecretName: signingKeySecretName
    relayKeysSecretNames: relayKeysSecretNames
    apiKeysSecretName: apiKeysSecretName
    cloudSigningKey: cloudSigningKey
    relayJwks: relayJwks
    apiKeys: apiKeysEnabled ? apiKeys : ''
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'writeback-functionapp'
  params: {
    location: location
    planName: 'plan-${namePrefix}-${resourceToken}'
    appName: 'func-${namePrefix}-${resourceToken}'
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainerName}'
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    // Exactly the settings writeback/cloud reads in Azure (see localOnlySettings for the rest).
    appSettings: {
      // Host storage through the app's identity: no account key anywhere.
      AzureWebJobsStorage__accountName: storage.outputs.accountName
      AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
      AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
      AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
      ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
      WRITEBACK_DOMAINS: join(domainNames, ',')
      WRITEBACK_UPN_SUFFIXES: upnSuffixes
      WRITEBACK_WAIT_SECONDS: string(waitSeconds)
      WRITEBACK_REQUEST_LIFETIME_SECONDS: string(requestLifetimeSeconds)
      WRITEBACK_HEARTBEAT_INTERVAL_SECONDS: string(heartbeatIntervalSeconds)
      WRITEBACK_AUDIT_TABLE: auditTableName
      WRITEBACK_AGENTS_TABLE: agentsTableName
      WRITEBACK_KEYVAULT_URL: keyVault.outputs.vaultUri
      WRITEBACK_KEYS_REFRESH_SECONDS: '300'
      WRITEBACK_AUTH_TENANT_ID: authTenantId
      WRITEBACK_AUTH_AUDIENCES: authAudiences
      // A Key Vault reference, resolved by the platform with the app's identity: the keys
      // themselves never appear in the template, the deployment or the site's configuration.
      WRITEBACK_API_KEYS: apiKeysEnabled ? '@Microsoft.KeyVault(VaultName=${keyVault.outputs.vaultName};SecretName=${apiKeysSecretName})' : ''
      // The roles a key caller has; the app refuses to start on a role it does not know.
      WRITEBACK_API_KEY_ROLES: join(apiKeyRoles, ',')
      APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
      // Local authentication is off on Application Insights: telemetry is sent with the identity.
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
      // The Event Grid output binding (connection WritebackEvents) publishes Completed events to
      // the completed topic with the app's identity.
      WritebackEvents__topicEndpointUri: eventGrid.outputs.completedTopicEndpoint
      // The Event Hubs trigger (connection EntraAuditHub) reads the audit stream with the identity.
      EntraAuditHub__fullyQualifiedNamespace: eventHubs.outputs.fullyQualifiedNamespace
      WRITEBACK_AUDIT_HUB: auditHubName
      WRITEBACK_AUDIT_CONSUMER_GROUP: auditConsumerGroupName
      WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE: unlockOnEntraSelfService ? 'true' : 'false'
      WRITEBACK_DRIFT_WINDOW_SECONDS: string(driftWindowSeconds)
      WRITEBACK_DRIFT_FORCE_CHANGE: driftForceChange ? 'true' : 'false'
      // The sweeper's timer (NCRONTAB): adopts the reply sessions of instances that are gone.
      WRITEBACK_SWEEP_SCHEDULE: '0 */1 * * * *'
    }
  }
}

module functionAccess 'modules/function-access.bicep' = {
  name: 'writeback-function-access'
  params: {
    principalId: functionApp.outputs.principalId
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    requestQueueNames: serviceBus.outputs.requestQueueNames
    outcomesQueueName: outcomesQueueName
    heartbeatsQueueName: heartbeatsQueueName
    vaultName: keyVault.outputs.vaultName
    secretNames: concat([signingKeySecretName], relayKeysSecretNames, apiKeysEnabled ? [apiKeysSecretName] : [])
    storageAccountName: storage.outputs.accountName
    deploymentContainerName: deploymentContainerName
    tableNames: [
      auditTableName
      agentsTableName
    ]
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    eventHubNamespaceName: eventHubs.outputs.namespaceName
    auditHubName: eventHubs.outputs.hubName
    completedTopicName: eventGrid.outputs.completedTopicName
  }
}

module eventSubscription 'modules/eventgrid-subscription.bicep' = if (eventSubscriptionEnabled) {
  name: 'writeback-eventgrid-subscription'
  params: {
    requestsTopicName: eventGrid.outputs.requestsTopicName
    functionAppName: functionApp.outputs.name
    functionName: eventFunctionName
    eventTypes: requestedEventTypes
    storageAccountName: storage.outputs.accountName
    deadLetterContainerName: deadLetterContainerName
  }
}

module relayAccess 'modules/relay-access.bicep' = [for (domain, i) in domains: {
  name: 'writeback-relay-access-${i}'
  params: {
    principalIds: domain.relayPrincipalIds
    serviceBusNamespaceName: serviceBus.outputs.namespaceName
    requestQueueName: serviceBus.outputs.requestQueueNames[i]
    outcomesQueueName: outcomesQueueName
    heartbeatsQueueName: heartbeatsQueueName
  }
}]

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output keyVaultUri string = keyVault.outputs.vaultUri
output requestQueueNames array = serviceBus.outputs.requestQueueNames
// Where portals publish Writeback.*.Requested events, and where they subscribe to the outcomes.
output eventGridRequestsTopicEndpoint string = eventGrid.outputs.requestsTopicEndpoint
output eventGridCompletedTopicEndpoint string = eventGrid.outputs.completedTopicEndpoint
// The Entra ID diagnostic setting streams AuditLogs to this hub with this rule (docs/deploy.md).
output eventHubsNamespace string = eventHubs.outputs.fullyQualifiedNamespace
output auditHubName string = eventHubs.outputs.hubName
output entraDiagnosticsRuleId string = eventHubs.outputs.diagnosticsRuleId
