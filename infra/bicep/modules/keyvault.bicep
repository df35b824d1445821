// The vault holding what the Function reads: the cloud's private signing key, each domain's relay
// public keys (JWKS) and, when API keys are on, the API keys. Access is by Azure RBAC only, one
// role per secret (function-access.bicep); soft delete and purge protection keep a deleted key
// recoverable for 90 days, so neither a mistake nor an attacker can erase it at once.
//
// Network: the vault keeps its public endpoint (no parameter changes that). A Flex Consumption
// app without virtual network integration reaches the vault over it, and Functions are not among
// the "trusted Microsoft services" a firewall lets through. Every request still needs an Entra ID
// identity with a role on the secret. Closing it means adding virtual network integration and a
// private endpoint, which this template does not do.

param location string
param vaultName string
param domainNames array
param signingKeySecretName string
param relayKeysSecretNames array
param apiKeysSecretName string

@description('Recover the soft-deleted vault of this name instead of creating one.')
param recover bool

@secure()
param cloudSigningKey string

@secure()
param relayJwks object

@secure()
param apiKeys string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: vaultName
  location: location
  //checkov:skip=CKV_AZURE_109:The Function App has no virtual network integration and is not a trusted service, so a default-deny firewall would lock it out; RBAC per secret guards access instead (see the comment at the top).
  //checkov:skip=CKV_AZURE_189:Same reason: public network access stays on until the app gets virtual network integration and the vault a private endpoint.
  properties: {
    // A deleted vault keeps its name for the 90 days of soft delete, and purge protection forbids
    // purging it: a redeployment after deleting the resource group recovers it, keys included
    // (learn.microsoft.com/azure/key-vault/general/key-vault-recovery).
    createMode: recover ? 'recover' : 'default'
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Each secret is written only when this deployment is given its value; otherwise it is left as it
// is, so keys rotated in Key Vault (docs/keys.md) are never overwritten by a redeployment.
module signingKey 'secret.bicep' = {
  name: 'writeback-secret-signing-key'
  params: {
    vaultName: vault.name
    secretName: signingKeySecretName
    contentType: 'application/jwk+json'
    value: cloudSigningKey
  }
}

module relayKeys 'secret.bicep' = [for (domain, i) in domainNames: {
  name: 'writeback-secret-relays-${i}'
  params: {
    vaultName: vault.name
    secretName: relayKeysSecretNames[i]
    contentType: 'application/jwk-set+json'
    value: contains(relayJwks, domain) ? relayJwks[domain] : ''
  }
}]

module apiKeysSecret 'secret.bicep' = {
  name: 'writeback-secret-api-keys'
  params: {
    vaultName: vault.name
    secretName: apiKeysSecretName
    contentType: 'text/plain'
    value: apiKeys
  }
}

output vaultName string = vault.name
output vaultUri string = vault.properties.vaultUri
