// What operators look at: the Azure Monitor workbook and the log alert rules over the
// Application Insights resource, and (given an e-mail address) the action group the alerts
// notify. The workbook and the alerts' queries are infra/monitoring's JSON files, which
// infra/terraform loads too; they read only the metrics and log events the code names in
// writeback/cloud/signals.py (docs/operations.md#dashboards-and-alerts).

param location string
param applicationInsightsName string
param namePrefix string
@description('The AD domains, lower case: the relay-offline alert expects a heartbeat from each.')
param domainNames array
@description('Where alerts are e-mailed; empty: no action group, the alerts show in the portal only.')
param alertEmail string
param failureRatePercent int
param relayOfflineMinutes int

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, 'writeback-workbook')
  location: location
  kind: 'shared'
  properties: {
    displayName: 'Writeback (${namePrefix})'
    category: 'workbook'
    sourceId: applicationInsights.id
    serializedData: replace(loadTextContent('../../monitoring/workbook.json'), '{applicationInsightsId}', applicationInsights.id)
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${namePrefix}-writeback'
  location: 'global'
  properties: {
    groupShortName: 'writeback'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var alertDefinitions = loadJsonContent('../../monitoring/alerts.json')
// The two settings a deployment chooses; every other value is the file's.
var windows = {
  'relay-offline': 'PT${relayOfflineMinutes}M'
}
var thresholds = {
  'failure-rate': failureRatePercent
}

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in items(alertDefinitions): {
  name: 'alert-${namePrefix}-${alert.key}'
  location: location
  kind: 'LogAlert'
  properties: {
    displayName: alert.value.displayName
    description: alert.value.description
    severity: alert.value.severity
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: alert.value.evaluationFrequency
    windowSize: contains(windows, alert.key) ? windows[alert.key] : alert.value.windowSize
    criteria: {
      allOf: [
        // metricMeasureColumn only where the file names one (the failure rate): without it the
        // rule counts the query's rows.
        union(empty(alert.value.metricMeasureColumn) ? {} : {
          metricMeasureColumn: alert.value.metricMeasureColumn
        }, {
          query: replace(alert.value.query, '{domains}', string(domainNames))
          timeAggregation: alert.value.timeAggregation
          operator: alert.value.operator
          threshold: contains(thresholds, alert.key) ? thresholds[alert.key] : alert.value.threshold
          dimensions: [for dimension in alert.value.dimensions: {
            name: dimension
            operator: 'Include'
            values: [
              '*'
            ]
          }]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        })
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup.id
      ]
    }
  }
}]
