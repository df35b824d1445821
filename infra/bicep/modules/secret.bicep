// One Key Vault secret, written only when a value is given: an empty value leaves the secret (and
// every version an operator added in Key Vault since) untouched.

param vaultName string
param secretName string
param contentType string

@secure()
param value string

@description('Deployment time; only the expiry below uses it.')
param now string = utcNow()

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(value)) {
  //checkov:skip=CKV_AZURE_41:False positive: checkov 3.x reads a conditional resource without its body; attributes.exp is set below (tests/infra checks every secret has it).
  //checkov:skip=CKV_AZURE_114:False positive for the same reason: contentType is set below (tests/infra checks it).
  parent: vault
  name: secretName
  properties: {
    value: value
    contentType: contentType
    attributes: {
      enabled: true
      // Six months: the rotation period of docs/keys.md. Key Vault still serves a secret after
      // its expiry; the date is there to make an overdue rotation visible (portal, Azure Policy).
      exp: dateTimeToEpoch(dateTimeAdd(now, 'P180D'))
    }
  }
}
