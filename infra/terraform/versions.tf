# Terraform and provider versions for the cloud side's Azure resources. Each provider is held
# to one major version (a minimum and `~>`): a new major can rename or drop arguments. No
# .terraform.lock.hcl is committed yet, because its hashes can only come from the registry:
# the first step of a deployment is `terraform providers lock` for the platforms that run it
# (README.md), and the lock file it writes is then committed.
terraform {
  # 1.9 lets a variable's validation refer to other variables (see variables.tf).
  required_version = ">= 1.9.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.42 is the first release with `rbac_authorization_enabled` on azurerm_key_vault
      # (the old `enable_rbac_authorization` goes away in 5.0).
      version = "~> 4.42"
    }
    # The one Flex Consumption setting azurerm 4.x lacks: HTTP per-instance concurrency.
    azapi = {
      source  = "Azure/azapi"
      version = "~> 2.2"
    }
    # The wait for the deployer's new roles to reach the data planes (roles.tf).
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
    }
  }
}

# The subscription comes from ARM_SUBSCRIPTION_ID (azurerm 4.x requires one), the credentials
# from the usual azurerm sources (Azure CLI login, OIDC in CI, ...).
provider "azurerm" {
  # The storage account refuses shared keys, so the provider reaches its data plane (it creates
  # the tables there) with an Entra ID token instead.
  storage_use_azuread = true

  features {
    key_vault {
      # The vault holds the cloud's signing key and is purge-protected: a destroy never purges.
      purge_soft_delete_on_destroy          = false
      purge_soft_deleted_secrets_on_destroy = false
      # A redeployment after deleting the resource group finds the vault's name taken by the
      # soft-deleted vault (purge protection keeps it 90 days) and recovers it, keys included,
      # as infra/bicep does with keyVaultRecover=true.
      recover_soft_deleted_key_vaults = true
      recover_soft_deleted_secrets    = true
    }
  }
}

# azapi signs in the same way as azurerm (Azure CLI, OIDC in CI, ...).
provider "azapi" {}
