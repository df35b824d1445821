# Terraform and provider versions for the cloud side's Azure resources.
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
    }
  }
}
