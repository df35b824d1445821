# Writeback's app registrations in Entra ID (azuread provider), as infra/bicep's
# modules/app-registration.bicep declares them: the API (identifier URI, the app roles callers
# are given, the Writeback.Self scope the self-service pages ask for, v2 access tokens, the
# onprem_sid claim), the pages' single-page application (MSAL.js, authorization code with PKCE,
# no secret) and the admin client (the `writeback` command line's public client: device code, or
# the browser with a loopback redirect; no secret), each with its service principal; both
# clients' tenant-wide (admin) consent; and the app roles given to groups or applications. Everything but names and URIs comes from
# writeback/entra/app-registration.json, which Bicep and `writeback entra app-registration` read
# too. Whoever applies needs Application Administrator (or Cloud Application Administrator) in
# Entra ID; create_app_registration = false leaves all of this out (docs/self-service.md).

locals {
  manifest        = jsondecode(file("${path.module}/../../writeback/entra/app-registration.json"))
  app_roles       = { for role in local.manifest.api.appRoles : role.value => role }
  create_app      = var.create_app_registration ? { main = true } : {}
  identifier_uri  = "api://${data.azurerm_client_config.current.tenant_id}/${local.manifest.api.identifierUriPrefix}${var.name_prefix}"
  function_host   = var.pages_host_name != "" ? var.pages_host_name : "func-${var.name_prefix}-${local.suffix}.azurewebsites.net"
  pages_redirect  = "https://${local.function_host}${var.pages_path}"
  role_assignment = var.create_app_registration ? { for a in var.app_role_assignments : "${a.role}/${lower(a.principal_id)}" => a } : {}
}

resource "azuread_application" "api" {
  for_each         = local.create_app
  display_name     = "${local.manifest.api.displayName} (${var.name_prefix})"
  sign_in_audience = "AzureADMyOrg"
  # The identifier URI carries the tenant id (api://<tenant>/writeback-<prefix>), a form Entra's
  # identifier URI restrictions allow, and needs no client id: set here, not by a separate
  # azuread_application_identifier_uri.
  identifier_uris = [local.identifier_uri]

  api {
    requested_access_token_version = local.manifest.api.requestedAccessTokenVersion

    oauth2_permission_scope {
      id                         = local.manifest.api.scope.id
      value                      = local.manifest.api.scope.value
      type                       = local.manifest.api.scope.type
      admin_consent_display_name = local.manifest.api.scope.adminConsentDisplayName
      admin_consent_description  = local.manifest.api.scope.adminConsentDescription
      user_consent_display_name  = local.manifest.api.scope.userConsentDisplayName
      user_consent_description   = local.manifest.api.scope.userConsentDescription
      enabled                    = local.manifest.api.scope.isEnabled
    }
  }

  dynamic "app_role" {
    for_each = local.manifest.api.appRoles
    content {
      id                   = app_role.value.id
      value                = app_role.value.value
      display_name         = app_role.value.displayName
      description          = app_role.value.description
      allowed_member_types = app_role.value.allowedMemberTypes
      enabled              = app_role.value.isEnabled
    }
  }

  optional_claims {
    dynamic "access_token" {
      for_each = local.manifest.api.optionalClaims.accessToken
      content {
        name      = access_token.value.name
        essential = access_token.value.essential
      }
    }
    dynamic "id_token" {
      for_each = local.manifest.api.optionalClaims.idToken
      content {
        name      = id_token.value.name
        essential = id_token.value.essential
      }
    }
  }
}

resource "azuread_service_principal" "api" {
  for_each  = local.create_app
  client_id = azuread_application.api["main"].client_id
}

# A public client without a secret: MSAL.js redeems the code with PKCE from the browser.
resource "azuread_application" "pages" {
  for_each                       = local.create_app
  display_name                   = "${local.manifest.pages.displayName} (${var.name_prefix})"
  sign_in_audience               = "AzureADMyOrg"
  fallback_public_client_enabled = false

  single_page_application {
    redirect_uris = [local.pages_redirect]
  }

  required_resource_access {
    resource_app_id = azuread_application.api["main"].client_id
    resource_access {
      id   = local.manifest.api.scope.id
      type = "Scope"
    }
  }

  required_resource_access {
    resource_app_id = local.manifest.graphAppId
    dynamic "resource_access" {
      for_each = local.manifest.graphSignInScopes
      content {
        id   = resource_access.value.id
        type = "Scope"
      }
    }
  }

  optional_claims {
    dynamic "id_token" {
      for_each = local.manifest.pages.optionalClaims.idToken
      content {
        name      = id_token.value.name
        essential = id_token.value.essential
      }
    }
  }
}

resource "azuread_service_principal" "pages" {
  for_each  = local.create_app
  client_id = azuread_application.pages["main"].client_id
}

# The command line's own public client, so that an administrator's `writeback login --auth
# device-code` (or browser) needs no consent prompt. Not a pre-authorization of another client on
# the API: Graph refuses preAuthorizedApplications naming a scope made in the same request. Its
# delegated tokens carry Writeback.Self and the user's app roles: they act on the user's own
# account unless the user holds the helpdesk's role (writeback/cloud/auth/delegation.py).
resource "azuread_application" "admin_client" {
  for_each                       = local.create_app
  display_name                   = "${local.manifest.adminClient.displayName} (${var.name_prefix})"
  sign_in_audience               = "AzureADMyOrg"
  fallback_public_client_enabled = true

  public_client {
    redirect_uris = local.manifest.adminClient.redirectUris
  }

  required_resource_access {
    resource_app_id = azuread_application.api["main"].client_id
    resource_access {
      id   = local.manifest.api.scope.id
      type = "Scope"
    }
  }

  required_resource_access {
    resource_app_id = local.manifest.graphAppId
    dynamic "resource_access" {
      for_each = local.manifest.graphSignInScopes
      content {
        id   = resource_access.value.id
        type = "Scope"
      }
    }
  }
}

resource "azuread_service_principal" "admin_client" {
  for_each  = local.create_app
  client_id = azuread_application.admin_client["main"].client_id
}

data "azuread_service_principal" "graph" {
  for_each  = local.create_app
  client_id = local.manifest.graphAppId
}

# Admin consent for every user: the pages may ask for Writeback.Self and sign users in without
# a consent prompt (user consent is off in many tenants).
resource "azuread_service_principal_delegated_permission_grant" "pages_api" {
  for_each                             = local.create_app
  service_principal_object_id          = azuread_service_principal.pages["main"].object_id
  resource_service_principal_object_id = azuread_service_principal.api["main"].object_id
  claim_values                         = [local.manifest.api.scope.value]
}

resource "azuread_service_principal_delegated_permission_grant" "pages_sign_in" {
  for_each                             = local.create_app
  service_principal_object_id          = azuread_service_principal.pages["main"].object_id
  resource_service_principal_object_id = data.azuread_service_principal.graph["main"].object_id
  claim_values                         = [for scope in local.manifest.graphSignInScopes : scope.value]
}

# The same consent for the admin client.
resource "azuread_service_principal_delegated_permission_grant" "admin_client_api" {
  for_each                             = local.create_app
  service_principal_object_id          = azuread_service_principal.admin_client["main"].object_id
  resource_service_principal_object_id = azuread_service_principal.api["main"].object_id
  claim_values                         = [local.manifest.api.scope.value]
}

resource "azuread_service_principal_delegated_permission_grant" "admin_client_sign_in" {
  for_each                             = local.create_app
  service_principal_object_id          = azuread_service_principal.admin_client["main"].object_id
  resource_service_principal_object_id = data.azuread_service_principal.graph["main"].object_id
  claim_values                         = [for scope in local.manifest.graphSignInScopes : scope.value]
}

resource "azuread_app_role_assignment" "api" {
  for_each            = local.role_assignment
  resource_object_id  = azuread_service_principal.api["main"].object_id
  app_role_id         = local.app_roles[each.value.role].id
  principal_object_id = each.value.principal_id
}

locals {
  # The API's tenant and audiences: the created registration's (client id and identifier URI)
  # and any given, or only those given.
  auth_tenant_id = var.auth_tenant_id != "" ? var.auth_tenant_id : (var.create_app_registration ? data.azurerm_client_config.current.tenant_id : "")
  auth_audiences = join(",", concat(
    var.create_app_registration ? [azuread_application.api["main"].client_id, local.identifier_uri] : [],
    trimspace(var.auth_audiences) == "" ? [] : [var.auth_audiences],
  ))
  pages_client_id = var.create_app_registration ? azuread_application.pages["main"].client_id : var.pages_client_id
}
