// Logs and telemetry: a Log Analytics workspace and a workspace-based Application Insights that
// accepts telemetry only from Entra ID identities (local, key-based ingestion is off).

param location string
param workspaceName string
param applicationInsightsName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    // 90 days, as infra/terraform: the audit of who reset which password outlives a quarter.
    retentionInDays: 90
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    // The instrumentation key in the connection string is then only an address, not a credential:
    // the Function signs in with its identity (Monitoring Metrics Publisher, function-access.bicep).
    DisableLocalAuth: true
  }
}

output applicationInsightsName string = applicationInsights.name
output connectionString string = applicationInsights.properties.ConnectionString
