// Writeback, the cloud side: the Azure Function that takes password operations, the Service Bus
// queues that carry them to the on-premises relays, the Key Vault holding the keys, the Event Grid
// topics that carry event-driven requests in and their outcomes out, the Event Hub that receives
// Entra ID's audit log, the storage and monitoring the Function needs, and (createAppRegistration)
// the Entra ID app registrations of the API, the self-service pages and the admin client. Deploy
// into a resource group:
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

@description('Create the API\'s, the self-service pages\' and the admin client\'s app registrations in Entra ID (Microsoft Graph Bicep extension; the deployer needs Application Administrator). False: create them by hand or with `writeback entra app-registration`, and give authTenantId, authAudiences and pagesClientId (docs/self-service.md).')
param createAppRegistration bool = true

@description('Entra ID tenant whose tokens the API accepts. Empty: the deployment\'s own tenant when createAppRegistration, else bearer tokens off.')
param authTenantId string = ''

@description('Accepted token audiences, comma separated (the API app registration\'s client id or Application ID URI). With createAppRegistration, the created API\'s are added to these.')
param authAudiences string = ''

@description('The self-service pages\' client id (their SPA app registration) when createAppRegistration is false; empty: no pages.')
param pagesClientId string = ''

@description('The host name the self-service pages are reached at (a custom domain); empty: the Function App\'s default host name, <app>.azurewebsites.net.')
param pagesHostName string = ''

@description('The path of the self-service pages on that host: their sign-in redirect URI is https://<host><pagesPath>.')
param pagesPath string = '/api/pages/'

@description('App roles of the API to give with createAppRegistration, e.g. a helpdesk group: [{ role: \'Writeback.Reset.Admin\', principalId: \'<object id>\' }].')
param appRoleAssignments array = []

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

@description('Flex Consumption: how many HTTP calls one instance serves at once. Each API call may wait up to waitSeconds for its relay, almost all of it idle on the event loop; Python\'s default of 1 would hold a whole instance per waiting call (docs/deploy.md#http-concurrency).')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('Flex Consumption: memory per instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Unlock the AD account when Entra ID\'s audit log reports "Unlock user account (self-service)" for a user of a writeback domain.')
param unlockOnEntraSelfService bool = false

@description('Conditional Access authentication context ids (c1 to c99), any of which a signed-in user\'s token must hold in acrs to reset the user\'s own password (docs/self-service.md). Empty: no step-up asked.')
param selfServiceAcrs array = []

@description('Authentication methods (amr values such as mfa), any of which a signed-in user\'s token must hold to reset the user\'s own password. v2.0 access tokens carry no amr: prefer selfServiceAcrs. Empty: none.')
param selfServiceAmr array = []

@description('A password reset or change in Entra ID with no writeback request for that user within this many seconds is recorded as drift.')
@minValue(1)
@maxValue(86400)
param driftWindowSeconds int = 300

@description('On drift, also set "must change password at next logon" in AD, so that the cloud and AD passwords cannot silently differ.')
param driftForceChange bool = false

@description('Which of the domains Microsoft\'s own writeback (Entra Connect or Cloud Sync) also serves. There, what Microsoft\'s SSPR library logged is recorded as written back by Microsoft, not as drift, and no self-service unlock is sent; a Microsoft 365 admin center reset is still drift (docs/events.md). Empty: writeback is the only writeback.')
param microsoftWritebackDomains array = []

@description('Create the Event Grid subscription that delivers writeback requests to the writeback_event function. Event Grid refuses it until the code is published: deploy once, publish, then deploy again with true.')
param eventSubscriptionEnabled bool = false

@description('The cloud\'s private signing key (JWK JSON). Empty leaves secret writeback-cloud-signing-key as it is; it must exist before the Function can start.')
@secure()
param cloudSigningKey string = ''

@description('Relay public keys: domain name -> JWKS JSON string. A domain left out keeps its secret as it is (rotation happens in Key Vault, see docs/keys.md).')
@secure()
param relayJwks object = {}

@description('Recover the soft-deleted vault of an earlier deployment with the same name (after its resource group was deleted), keys included, instead of creating one: a purge-protected vault name stays taken for 90 days (docs/deploy.md#redeploying-after-deleting-the-resource-group).')
param keyVaultRecover bool = false

@description('The app roles an API key caller has (Writeback.Reset.SelfService, Writeback.Reset.Admin, Writeback.Change, Writeback.Unlock, Writeback.Expire, Writeback.Read). Empty: every role. Grant a portal\'s key only what it calls.')
@allowed([
  'Writeback.Reset.SelfService'
  'Writeback.Reset.Admin'
  'Writeback.Change'
  'Writeback.Unlock'
  'Writeback.Expire'
  'Writeback.Read'
])
param apiKeyRoles array = []

@description('The API keys (secret writeback-api-keys) when apiKeysEnabled. Empty leaves the secret as it is.')
@secure()
param apiKeys string = ''

@description('Where the alert rules e-mail operators (an action group). Empty: no action group; the alerts still fire and show in the portal.')
param alertEmail string = ''

@description('The failure-rate alert fires when more than this percentage of write calls failed or stayed pending in 15 minutes.')
@minValue(1)
@maxValue(100)
param alertFailureRatePercent int = 10

@description('The relay-offline alert fires for a domain from which no relay heartbeat arrived in this many minutes.')
@allowed([
  5
  10
  15
  30
  45
])
param relayOfflineMinutes int = 15

// Settings the code reads but Azure must not set. The connection strings and the secrets
// directory are the local stack's way in (Azure uses the identity-based `__` settings and Key
// Vault); WRITEBACK_AUTH_JWKS_URL and WRITEBACK_AUTH_AUTHORITY point token checks at a test
// issuer (Azure uses Entra ID and the tenant's keys);
// Flex Consumption takes the runtime from
// functionAppConfig, not from FUNCTIONS_WORKER_RUNTIME. Nothing reads this list at deployment
// time: tests/infra uses it to tell "deliberately absent" from "forgotten".
#disable-next-line no-unused-vars
var localOnlySettings = [
  'AzureWebJobsStorage'
  'ServiceBusConnection'
  'WRITEBACK_SECRETS_DIR'
  'WRITEBACK_AUTH_JWKS_URL'
  'WRITEBACK_AUTH_AUTHORITY'
  'FUNCTIONS_WORKER_RUNTIME'
]

var resourceToken = toLower(uniqueString(resourceGroup().id, namePrefix))
// Every globally unique name is <kind>-<namePrefix>-<suffix> (storage: st<namePrefix><suffix>),
// the same pattern as infra/terraform (tests/infra checks both).
var suffix = take(resourceToken, 8)
var functionAppName = 'func-${namePrefix}-${suffix}'
// The pages' sign-in redirect. The app's default host name is <app>.azurewebsites.net; it is
// written here, not read from the app, because the app's settings need the pages' client id
// (the registration cannot wait for the app, nor the app for the registration).
var pagesRedirectUri = 'https://${empty(pagesHostName) ? '${functionAppName}.azurewebsites.net' : pagesHostName}${checkedPagesPath}'
var domainNames = [for domain in domains: domain.name]
var domainKeys = [for domain in domains: toLower(domain.name)]

// Cross-parameter checks, the ones infra/terraform's variable validations make. fail() stops the
// deployment before any resource is touched; each checked value is used below, so that ARM
// evaluates the check (Bicep flow-control functions: learn.microsoft.com/azure/
// azure-resource-manager/bicep/bicep-functions-flow-control).
var checkedWaitSeconds = (waitSeconds <= requestLifetimeSeconds) ? waitSeconds : fail('waitSeconds must not exceed requestLifetimeSeconds.')
var checkedAuthAudiences = (createAppRegistration || empty(authTenantId) == empty(trim(authAudiences))) ? authAudiences : fail('authAudiences and authTenantId go together: set both or neither.')
var checkedAuthTenantId = (apiKeysEnabled || createAppRegistration || !empty(authTenantId)) ? authTenantId : fail('No way to authenticate callers: set authTenantId and authAudiences, or apiKeysEnabled, or both.')
var checkedPagesPath = (startsWith(pagesPath, '/') && endsWith(pagesPath, '/')) ? pagesPath : fail('pagesPath must start and end with a slash, like /api/pages/.')
var checkedAppRoleAssignments = (createAppRegistration || empty(appRoleAssignments)) ? appRoleAssignments : fail('appRoleAssignments needs createAppRegistration: give the roles in Entra ID instead.')
var checkedDomainNames = (length(union(domainKeys, [])) == length(domainKeys)) ? domainNames : fail('Domain names must be unique, ignoring case (they name queues and secrets).')
var relayJwksDomainsKnown = [for entry in items(relayJwks): contains(domainKeys, toLower(entry.key))]
var checkedRelayJwks = contains(relayJwksDomainsKnown, false) ? fail('Every relayJwks key must be one of the domains.') : relayJwks
var microsoftWritebackDomainsKnown = [for name in microsoftWritebackDomains: contains(domainKeys, toLower(name))]
var checkedMicrosoftWritebackDomains = contains(microsoftWritebackDomainsKnown, false) ? fail('Every microsoftWritebackDomains entry must be one of the domains.') : microsoftWritebackDomains
var relayPrincipalIdLists = [for domain in domains: domain.relayPrincipalIds]
var relayPrincipalIds = flatten(relayPrincipalIdLists)
// An object ID is a GUID, 8-4-4-4-12 hexadecimal digits in either case, as infra/terraform's
// regex has it. Bicep has no regular expressions: each hexadecimal digit becomes '0', and only a
// GUID then reads as the zero GUID (any other character, or a dash or digit out of place, stays).
var relayIdShapes = [for id in relayPrincipalIds: replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(toLower(id), '1', '0'), '2', '0'), '3', '0'), '4', '0'), '5', '0'), '6', '0'), '7', '0'), '8', '0'), '9', '0'), 'a', '0'), 'b', '0'), 'c', '0'), 'd', '0'), 'e', '0'), 'f', '0')]
var relayIdsAreGuids = [for shape in relayIdShapes: shape == '00000000-0000-0000-0000-000000000000']
var checkedDomains = contains(relayIdsAreGuids, false) ? fail('Each relayPrincipalIds entry must be an object ID (a GUID).') : domains

// Entity names are a contract with the code (writeback/transport, writeback/cloud/secrets.py).
var outcomesQueueName = 'writeback-outcomes'
var heartbeatsQueueName = 'writeback-heartbeats'
var requestQueueNames = [for domain in checkedDomains: 'writeback-requests-${toLower(domain.name)}']
var signingKeySecretName = 'writeback-cloud-signing-key'
// '-' doubled first, then '.' as '-': corp.example.com and corp-example.com never share a secret.
var relayKeysSecretNames = [for domain in domains: 'writeback-relays-${replace(replace(toLower(domain.name), '-', '--'), '.', '-')}']
var apiKeysSecretName = 'writeback-api-keys'
// The secrets this deployment writes, and so the ones the function is granted (a role on a secret
// needs the secret to exist; infra/terraform grants exactly the same ones). A secret left out is
// managed in Key Vault, with its grant given there (docs/deploy.md#secrets-you-manage-yourself).
var writtenRelayKeysSecretNames = [for (domain, i) in domains: empty(contains(checkedRelayJwks, domain.name) ? checkedRelayJwks[domain.name] : '') ? '' : relayKeysSecretNames[i]]
var writtenSecretNames = concat(empty(cloudSigningKey) ? [] : [signingKeySecretName], intersection(relayKeysSecretNames, writtenRelayKeysSecretNames), (apiKeysEnabled && !empty(apiKeys)) ? [apiKeysSecretName] : [])
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
    workspaceName: 'log-${namePrefix}-${suffix}'
    applicationInsightsName: 'appi-${namePrefix}-${suffix}'
  }
}

module operations 'modules/operations.bicep' = {
  name: 'writeback-operations'
  params: {
    location: location
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    namePrefix: namePrefix
    domainNames: domainKeys
    alertEmail: alertEmail
    failureRatePercent: alertFailureRatePercent
    relayOfflineMinutes: relayOfflineMinutes
  }
}

module storage 'modules/storage.bicep' = {
  name: 'writeback-storage'
  params: {
    location: location
    accountName: 'st${namePrefix}${suffix}'
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
    namespaceName: 'sbns-${namePrefix}-${suffix}'
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
    requestsTopicName: 'evgt-${namePrefix}-${suffix}-requests'
    completedTopicName: 'evgt-${namePrefix}-${suffix}-completed'
    storageAccountName: storage.outputs.accountName
    deadLetterContainerName: deadLetterContainerName
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'writeback-eventhubs'
  params: {
    location: location
    namespaceName: 'evhns-${namePrefix}-${suffix}'
    hubName: auditHubName
    consumerGroupName: auditConsumerGroupName
    diagnosticsRuleName: entraDiagnosticsRuleName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'writeback-keyvault'
  params: {
    location: location
    vaultName: 'kv-${namePrefix}-${suffix}'
    domainNames: checkedDomainNames
    recover: keyVaultRecover
    signingKeySecretName: signingKeySecretName
    relayKeysSecretNames: relayKeysSecretNames
    apiKeysSecretName: apiKeysSecretName
    cloudSigningKey: cloudSigningKey
    relayJwks: checkedRelayJwks
    apiKeys: apiKeysEnabled ? apiKeys : ''
  }
}

module appRegistration 'modules/app-registration.bicep' = if (createAppRegistration) {
  name: 'writeback-app-registration'
  params: {
    namePrefix: namePrefix
    pagesRedirectUri: pagesRedirectUri
    appRoleAssignments: checkedAppRoleAssignments
  }
}

// The API's tenant and audiences: the created registration's (client id and identifier URI) and
// any given, or only those given.
var createdAudiences = createAppRegistration ? [
  appRegistration.outputs.apiClientId
  appRegistration.outputs.identifierUri
] : []
var givenAudiences = empty(trim(checkedAuthAudiences)) ? [] : [checkedAuthAudiences]
var effectiveAuthTenantId = (createAppRegistration && empty(checkedAuthTenantId)) ? appRegistration.outputs.tenantId : checkedAuthTenantId
var effectiveAuthAudiences = join(concat(createdAudiences, givenAudiences), ',')
var effectivePagesClientId = createAppRegistration ? appRegistration.outputs.pagesClientId : pagesClientId

module functionApp 'modules/functionapp.bicep' = {
  name: 'writeback-functionapp'
  params: {
    location: location
    planName: 'plan-${namePrefix}-${suffix}'
    appName: functionAppName
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainerName}'
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
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
      WRITEBACK_WAIT_SECONDS: string(checkedWaitSeconds)
      WRITEBACK_REQUEST_LIFETIME_SECONDS: string(requestLifetimeSeconds)
      WRITEBACK_HEARTBEAT_INTERVAL_SECONDS: string(heartbeatIntervalSeconds)
      WRITEBACK_AUDIT_TABLE: auditTableName
      WRITEBACK_AGENTS_TABLE: agentsTableName
      WRITEBACK_KEYVAULT_URL: keyVault.outputs.vaultUri
      WRITEBACK_KEYS_REFRESH_SECONDS: '300'
      WRITEBACK_AUTH_TENANT_ID: effectiveAuthTenantId
      WRITEBACK_AUTH_AUDIENCES: effectiveAuthAudiences
      // The self-service pages' SPA client id, for MSAL.js; empty: no pages.
      WRITEBACK_PAGES_CLIENT_ID: effectivePagesClientId
      // A Key Vault reference, resolved by the platform with the app's identity: the keys
      // themselves never appear in the template, the deployment or the site's configuration.
      WRITEBACK_API_KEYS: apiKeysEnabled ? '@Microsoft.KeyVault(VaultName=${keyVault.outputs.vaultName};SecretName=${apiKeysSecretName})' : ''
      // The roles a key caller has; the app refuses to start on a role it does not know.
      WRITEBACK_API_KEY_ROLES: join(apiKeyRoles, ',')
      // The strong verification a signed-in user's reset of the user's own password needs.
      WRITEBACK_SELF_SERVICE_ACRS: join(selfServiceAcrs, ',')
      WRITEBACK_SELF_SERVICE_AMR: join(selfServiceAmr, ',')
      APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
      // Local authentication is off on Application Insights: telemetry is sent with the identity.
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
      // One telemetry pipeline (host.json telemetryMode OpenTelemetry): the Python worker sets up
      // the Azure Monitor distro and runs each invocation in the host's trace, so the app's spans
      // and logs join the host's requests (docs/operations.md#telemetry).
      PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
      PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'writeback'
      // On Python 3.11/3.12 the app's pinned packages (requirements.txt: azure-functions and the
      // rest) load ahead of the worker's bundled copies (docs/deploy.md#python-packages). The
      // Event Grid trigger no longer depends on it: it takes the event as its JSON text, which
      // every azure-functions release decodes alike.
      PYTHON_ISOLATE_WORKER_DEPENDENCIES: '1'
      // The host's diagnostic events go to per-month tables (AzureFunctionsDiagnosticEvents*)
      // the identity has no role on; tables are granted one by one (docs/deploy.md#host-storage).
      AzureWebJobsFeatureFlags: 'DisableDiagnosticEventLogging'
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
      WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS: join(checkedMicrosoftWritebackDomains, ',')
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
    secretNames: writtenSecretNames
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

module relayAccess 'modules/relay-access.bicep' = [for (domain, i) in checkedDomains: {
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
// The app registrations: created here (createAppRegistration), or the values given by hand.
output authTenantId string = effectiveAuthTenantId
output authAudiences string = effectiveAuthAudiences
output apiClientId string = createAppRegistration ? appRegistration.outputs.apiClientId : ''
output apiIdentifierUri string = createAppRegistration ? appRegistration.outputs.identifierUri : ''
output pagesClientId string = effectivePagesClientId
output pagesRedirectUri string = pagesRedirectUri
output adminClientId string = createAppRegistration ? appRegistration.outputs.adminClientId : ''
