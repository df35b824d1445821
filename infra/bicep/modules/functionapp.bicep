// The Function App (function_app.py) on a Flex Consumption plan, with a system-assigned identity
// for everything it calls: host storage, the deployment package, Service Bus, Key Vault, tables
// and Application Insights. No connection string or key is stored in its configuration.

param location string
param planName string
param appName string
param deploymentContainerUrl string
param pythonVersion string
param maximumInstanceCount int
param instanceMemoryMB int
param httpPerInstanceConcurrency int

@description('App settings, name -> value (main.bicep lists them).')
param appSettings object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  //checkov:skip=CKV_AZURE_225:Flex Consumption offers zone redundancy only in some regions, so a template meant for any region cannot turn it on.
  properties: {
    reserved: true
  }
}

// App Service Authentication (EasyAuth) stays off: the application authenticates every call itself
// (Entra ID bearer tokens with app roles, or API keys from Key Vault; writeback/cloud/auth.py),
// the same way in Azure and on the local host.
resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  kind: 'functionapp,linux'
  // `azd deploy` finds the app of service `api` (azure.yaml) by this tag.
  tags: {
    'azd-service-name': 'api'
  }
  identity: {
    type: 'SystemAssigned'
  }
  //checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP endpoint at all, and Azure refuses siteConfig.ftpsState on a Flex Consumption site in newer regions (error 51021), so the property is left out.
  //checkov:skip=CKV_AZURE_17:Callers authenticate with Entra ID tokens or API keys, not client certificates.
  //checkov:skip=CKV_AZURE_222:The API is called from outside Azure (the self-service reset portal and admin tools), so public network access stays on; every call is authenticated by the application.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    //checkov:skip=CKV_AZURE_212:numberOfWorkers belongs to dedicated plans; Flex Consumption adds instances itself, per function, up to maximumInstanceCount.
    //checkov:skip=CKV_AZURE_213:App Service health check pings anonymously, and the app has no anonymous endpoint: /api/v1/health needs a caller with the read role and reports the relays, not the instance.
    siteConfig: {
      minTlsVersion: '1.2'
      // No ftpsState: Flex Consumption has no FTP(S), lists the property among its deprecated
      // ones, and newer regions refuse it (error 51021). tests/infra keeps it out.
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // HTTP calls one instance takes at once (Python's default is 1); see main.bicep.
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output principalId string = site.identity.principalId
