# Key Vault (Azure RBAC, purge-protected) with the cloud's signing key, each domain's relay
# public keys and, when enabled, the API keys. Terraform writes a secret only when its value is
# given; the Function App's identity can read exactly the secrets written here (roles.tf).
#
# Each secret's value is written once, when Terraform creates it. Keys rotate in Key Vault
# (docs/keys.md), and a later apply must not write the old value back over a rotation, so every
# secret ignores changes to its value: infra/bicep keeps the same promise (a redeployment never
# undoes a rotation). Each secret also refuses to be destroyed. Its count follows its value, and
# Terraform cannot keep an instance whose count drops: a value emptied on a later apply (or a
# domain removed) would destroy the secret and the app's role on it, taking the app down. The
# plan stops with "Instance cannot be destroyed" instead; README.md#secrets says how to hand a
# secret over to Key Vault, which keeps it and its role as infra/bicep does.

resource "azurerm_key_vault" "main" {
  #checkov:skip=CKV_AZURE_109:The Function App has no virtual network or fixed outbound address here, so a firewall cannot admit it; access is Azure RBAC per secret
  #checkov:skip=CKV_AZURE_189:Public network access stays on for the same reason as CKV_AZURE_109; every read needs an Entra ID identity with a role on that secret
  #checkov:skip=CKV2_AZURE_32:A private endpoint needs virtual network integration of the Function App, which this deployment does not have (see CKV_AZURE_109)
  name                       = "kv-${var.name_prefix}-${local.suffix}"
  location                   = local.location
  resource_group_name        = data.azurerm_resource_group.main.name
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  rbac_authorization_enabled = true
  soft_delete_retention_days = 90
  # The signing key must survive a mistaken delete: nobody can purge it before 90 days.
  purge_protection_enabled = true
}

resource "azurerm_key_vault_secret" "signing_key" {
  #checkov:skip=CKV_AZURE_41:Keys rotate by the procedure in docs/keys.md, not by a date; a date fixed here would drift from the rotations, and timestamp() would change on every plan
  count        = local.create_signing_key_secret ? 1 : 0
  name         = "writeback-cloud-signing-key"
  key_vault_id = azurerm_key_vault.main.id
  value        = var.cloud_signing_key
  content_type = "application/jwk+json"
  depends_on   = [time_sleep.deployer_roles_propagate]

  lifecycle {
    ignore_changes  = [value]
    prevent_destroy = true
  }
}

# writeback-relays-<domain, lower case, each '-' doubled, each '.' as '-'>, the rule of
# writeback.cloud.secrets.relay_keys_secret (doubling keeps a-b.c and a.b-c apart).
resource "azurerm_key_vault_secret" "relay_keys" {
  #checkov:skip=CKV_AZURE_41:Keys rotate by the procedure in docs/keys.md, not by a date; a date fixed here would drift from the rotations, and timestamp() would change on every plan
  for_each     = local.relay_jwks_domains
  name         = "writeback-relays-${replace(replace(each.key, "-", "--"), ".", "-")}"
  key_vault_id = azurerm_key_vault.main.id
  value        = local.relay_jwks[each.key]
  content_type = "application/jwk-set+json"
  depends_on   = [time_sleep.deployer_roles_propagate]

  lifecycle {
    ignore_changes  = [value]
    prevent_destroy = true
  }
}

resource "azurerm_key_vault_secret" "api_keys" {
  #checkov:skip=CKV_AZURE_41:Keys rotate by the procedure in docs/keys.md, not by a date; a date fixed here would drift from the rotations, and timestamp() would change on every plan
  count        = local.create_api_keys_secret ? 1 : 0
  name         = "writeback-api-keys"
  key_vault_id = azurerm_key_vault.main.id
  value        = var.api_keys
  content_type = "text/plain"
  depends_on   = [time_sleep.deployer_roles_propagate]

  lifecycle {
    ignore_changes  = [value]
    prevent_destroy = true
  }
}
