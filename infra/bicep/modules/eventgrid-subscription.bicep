// The Event Grid subscription that hands writeback requests to the writeback_event function.
//
// Event Grid checks that the function exists when the subscription is created, and a new Function
// App has no functions until the code is published. main.bicep therefore deploys this module only
// with eventSubscriptionEnabled: deploy once, publish the code, deploy again with the switch on.
//
// Delivery: CloudEvents 1.0, one event per call, only the three Writeback.*.Requested types (the
// Completed events live on another topic anyway). A request carries a password sealed to the
// relays' keys and the user is waiting, so it is retried for ten minutes at most; then it goes to
// the dead-letter container (with the topic's identity: the account has no shared keys) and is
// never applied late.

param requestsTopicName string
param functionAppName string
param functionName string
param eventTypes array
param storageAccountName string
param deadLetterContainerName string

resource requestsTopic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: requestsTopicName
}

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource eventFunction 'Microsoft.Web/sites/functions@2024-04-01' existing = {
  parent: site
  name: functionName
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource toFunction 'Microsoft.EventGrid/topics/eventSubscriptions@2025-02-15' = {
  parent: requestsTopic
  name: 'writeback-event-function'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: eventFunction.id
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'CloudEventSchemaV1_0'
    filter: {
      includedEventTypes: eventTypes
    }
    retryPolicy: {
      maxDeliveryAttempts: 5
      eventTimeToLiveInMinutes: 10
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: account.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output name string = toFunction.name
