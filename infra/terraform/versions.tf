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
      # 4.46 is the first release with `http_concurrency` on azurerm_function_app_flex_consumption
      # (hashicorp/terraform-provider-azurerm#29678; npm @cdktf/provider-azurerm 14.13.1, built
      # from azurerm 4.45.1, lacks it, 14.14.0, from 4.46.0, has it). It must be set through
      # azurerm: a release that knows the argument but is not given it resets the value on the
      # app's next update, whoever else wrote it. 4.42 brought `rbac_authorization_enabled` on
      # azurerm_key_vault (the old `enable_rbac_authorization` goes away in 5.0).
      version = "~> 4.46"
    }
    # The app registrations (app-registration.tf). 3.7 is the release npm
    # @cdktf/provider-azuread 14.3.1 was generated from, whose schema tests/infra checks against.
    azuread = {
      source  = "hashicorp/azuread"
      version = "~> 3.7"
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

# The tenant comes from the Azure CLI login (or ARM_TENANT_ID), like azurerm's. Nothing is set:
# the provider talks to Microsoft Graph with whoever applies.
provider "azuread" {}
