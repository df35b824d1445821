# Inputs of the deployment. The names and defaults are shared with infra/bicep (a test keeps the
# two at parity); the settings they feed are read by writeback/cloud/settings.py, and the
# validations below refuse what that code would refuse at start-up.

variable "name_prefix" {
  description = "Short prefix of every resource name: 3 to 11 lower-case letters or digits."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,11}$", var.name_prefix))
    error_message = "name_prefix must be 3 to 11 lower-case letters or digits (storage account names allow nothing else)."
  }
}

variable "location" {
  description = "Azure region of the resources; empty or null: the resource group's region."
  type        = string
  default     = null
}

variable "resource_group_name" {
  description = "The existing resource group to deploy into."
  type        = string
}

variable "domains" {
  description = <<-EOT
    The AD domains the cloud writes back to. Each gets its own request queue and relay JWKS
    secret; relay_principal_ids are the object IDs of the identities its relays run as (a
    service principal, or an Azure Arc machine's managed identity).
  EOT
  type = list(object({
    name                = string
    relay_principal_ids = list(string)
  }))

  validation {
    condition     = length(var.domains) > 0
    error_message = "domains must name at least one AD domain."
  }

  validation {
    condition = alltrue([
      for d in var.domains :
      can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", lower(d.name)))
    ])
    error_message = "Each domain name must be a DNS name (letters, digits, inner dashes, dots between labels)."
  }

  validation {
    condition     = length(distinct([for d in var.domains : lower(d.name)])) == length(var.domains)
    error_message = "Domain names must be unique, ignoring case (they name queues and secrets)."
  }

  validation {
    # Key Vault secret names are at most 127 characters.
    condition = alltrue([
      for d in var.domains :
      length("writeback-relays-${replace(replace(lower(d.name), "-", "--"), ".", "-")}") <= 127
    ])
    error_message = "A domain name is too long for its relay JWKS secret name (127 characters at most)."
  }

  validation {
    condition = alltrue(flatten([
      for d in var.domains : [
        for id in d.relay_principal_ids :
        can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", id))
      ]
    ]))
    error_message = "Each relay_principal_ids entry must be an object ID (a GUID)."
  }
}

variable "servicebus_sku" {
  description = "Service Bus tier: Standard, or Premium (isolation, private networking)."
  type        = string
  default     = "Standard"

  validation {
    # Sessions and duplicate detection, which the queues need, do not exist in Basic.
    condition     = contains(["Standard", "Premium"], var.servicebus_sku)
    error_message = "servicebus_sku must be Standard or Premium."
  }
}

variable "create_app_registration" {
  description = "Create the API's, the self-service pages' and the admin client's app registrations in Entra ID (azuread; whoever applies needs Application Administrator). False: create them by hand or with `writeback entra app-registration`, and give auth_tenant_id, auth_audiences and pages_client_id (docs/self-service.md)."
  type        = bool
  default     = true
}

variable "auth_tenant_id" {
  description = "Entra ID tenant (directory) ID whose tokens callers present. Empty: the deployment's own tenant with create_app_registration, else no token auth."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_tenant_id == "" || can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.auth_tenant_id))
    error_message = "auth_tenant_id must be the tenant ID (a GUID), not a domain name, or empty."
  }
}

variable "auth_audiences" {
  description = "Comma-separated audiences (app ID URI, client ID) a caller's token must carry. With create_app_registration, the created API's are added to these."
  type        = string
  default     = ""

  validation {
    condition     = var.create_app_registration || (var.auth_tenant_id == "") == (trimspace(var.auth_audiences) == "")
    error_message = "auth_audiences and auth_tenant_id go together: set both or neither."
  }
}

variable "api_keys_enabled" {
  description = "Accept API keys (the writeback-api-keys secret, read through a Key Vault reference)."
  type        = bool
  default     = false

  validation {
    condition     = var.api_keys_enabled || var.create_app_registration || var.auth_tenant_id != ""
    error_message = "No way to authenticate callers: set auth_tenant_id and auth_audiences, or api_keys_enabled, or both."
  }
}

variable "heartbeat_interval_seconds" {
  description = "How often relays are expected to send a heartbeat."
  type        = number
  default     = 60

  validation {
    condition     = var.heartbeat_interval_seconds >= 1 && var.heartbeat_interval_seconds <= 3600
    error_message = "heartbeat_interval_seconds must be between 1 and 3600."
  }
}

variable "wait_seconds" {
  description = "How long an HTTP call waits for the relay's outcome."
  type        = number
  default     = 25

  validation {
    # Azure ends an HTTP call at 230 s; the code keeps well inside it.
    condition     = var.wait_seconds >= 1 && var.wait_seconds <= 200 && var.wait_seconds <= var.request_lifetime_seconds
    error_message = "wait_seconds must be between 1 and 200 and not exceed request_lifetime_seconds."
  }
}

variable "request_lifetime_seconds" {
  description = "How long a request stays valid; a relay never applies an older one."
  type        = number
  default     = 60

  validation {
    condition     = var.request_lifetime_seconds >= 5 && var.request_lifetime_seconds <= 600
    error_message = "request_lifetime_seconds must be between 5 and 600 (the request queues' time-to-live)."
  }
}

variable "python_version" {
  description = "Python version of the Function App."
  type        = string
  default     = "3.11"

  validation {
    condition     = contains(["3.11", "3.12"], var.python_version)
    error_message = "python_version must be 3.11 or 3.12 (the project needs 3.11 or later)."
  }
}

variable "maximum_instance_count" {
  description = "The most instances the Flex Consumption app scales out to."
  type        = number
  default     = 40

  validation {
    condition     = var.maximum_instance_count >= 1 && var.maximum_instance_count <= 1000
    error_message = "maximum_instance_count must be between 1 and 1000."
  }
}

variable "http_per_instance_concurrency" {
  description = "How many HTTP calls one Flex Consumption instance serves at once. Each API call may wait up to wait_seconds for its relay, almost all of it idle; Python's default of 1 would hold a whole instance per waiting call."
  type        = number
  default     = 16

  validation {
    condition     = var.http_per_instance_concurrency >= 1 && var.http_per_instance_concurrency <= 1000 && floor(var.http_per_instance_concurrency) == var.http_per_instance_concurrency
    error_message = "http_per_instance_concurrency must be a whole number between 1 and 1000."
  }
}

variable "instance_memory_mb" {
  description = "Memory of each Flex Consumption instance, in MB."
  type        = number
  default     = 2048

  validation {
    condition     = contains([512, 2048, 4096], var.instance_memory_mb)
    error_message = "instance_memory_mb must be 512, 2048 or 4096."
  }
}

variable "upn_suffixes" {
  description = "Extra UPN suffix routes, suffix=domain separated by ';' (e.g. \"example.com=corp.example.com\"); each domain always serves its own name."
  type        = string
  default     = ""
}

variable "cloud_signing_key" {
  description = "The cloud's private signing key (a JWK as JSON); empty: the secret is managed outside Terraform."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.cloud_signing_key == "" || can(jsondecode(var.cloud_signing_key).d)
    error_message = "cloud_signing_key must be a private JWK (JSON with a \"d\" member), or empty."
  }
}

variable "relay_jwks" {
  description = "Each domain's relay public keys: domain name -> JWKS JSON (from `writeback-relay keys export`)."
  type        = map(string)
  default     = {}
  sensitive   = true

  validation {
    condition     = alltrue([for name in keys(var.relay_jwks) : contains([for d in var.domains : lower(d.name)], lower(name))])
    error_message = "Every relay_jwks key must be one of the domains."
  }

  validation {
    # Public keys only: a private relay key in the cloud's hands would undo the end-to-end sealing.
    condition = alltrue([
      for jwks in values(var.relay_jwks) :
      jwks == "" || try(alltrue([for key in jsondecode(jwks).keys : !contains(keys(key), "d")]), false)
    ])
    error_message = "Each relay_jwks value must be a JWKS (JSON with \"keys\") of public keys only, or empty."
  }
}

variable "api_keys" {
  description = "The API keys callers may present (comma-separated), stored as the writeback-api-keys secret."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = !var.api_keys_enabled || var.api_keys != ""
    error_message = "api_keys must be set when api_keys_enabled is true."
  }
}

variable "unlock_on_entra_self_service" {
  description = "Unlock the AD account when Entra ID's audit log reports \"Unlock user account (self-service)\" for a user of a writeback domain."
  type        = bool
  default     = false
}

variable "self_service_acrs" {
  description = "Conditional Access authentication context ids (c1 to c99), any of which a signed-in user's token must hold in acrs to reset the user's own password (docs/self-service.md). Empty: no step-up asked."
  type        = list(string)
  default     = []
}

variable "self_service_amr" {
  description = "Authentication methods (amr values such as mfa), any of which a signed-in user's token must hold to reset the user's own password. v2.0 access tokens carry no amr: prefer self_service_acrs. Empty: none."
  type        = list(string)
  default     = []
}

variable "api_key_roles" {
  description = "The app roles an API key caller has. Empty: every role. Grant a portal's key only what it calls."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for role in var.api_key_roles : contains(["Writeback.Reset.SelfService", "Writeback.Reset.Admin", "Writeback.Change", "Writeback.Unlock", "Writeback.Expire", "Writeback.Read"], role)])
    error_message = "api_key_roles may hold only Writeback.Reset.SelfService, Writeback.Reset.Admin, Writeback.Change, Writeback.Unlock, Writeback.Expire, Writeback.Read."
  }
}

variable "drift_window_seconds" {
  description = "A password reset or change in Entra ID with no writeback request for that user within this many seconds is recorded as drift."
  type        = number
  default     = 300

  validation {
    condition     = var.drift_window_seconds >= 1 && var.drift_window_seconds <= 86400 && floor(var.drift_window_seconds) == var.drift_window_seconds
    error_message = "drift_window_seconds must be a whole number between 1 and 86400."
  }
}

variable "drift_force_change" {
  description = "On drift, also set \"must change password at next logon\" in AD, so that the cloud and AD passwords cannot silently differ."
  type        = bool
  default     = false
}

variable "microsoft_writeback_domains" {
  description = "Which of the domains Microsoft's own writeback (Entra Connect or Cloud Sync) also serves. There, what Microsoft's SSPR library logged is recorded as written back by Microsoft, not as drift, and no self-service unlock is sent; a Microsoft 365 admin center reset is still drift (docs/events.md). Empty: writeback is the only writeback."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for name in var.microsoft_writeback_domains : contains([for d in var.domains : lower(d.name)], lower(name))])
    error_message = "Every microsoft_writeback_domains entry must be one of the domains."
  }
}

variable "event_subscription_enabled" {
  description = "Create the Event Grid subscription to the writeback_event function. Event Grid refuses it until the code is published: apply once, publish, then apply again with true."
  type        = bool
  default     = false
}

variable "pages_client_id" {
  description = "The self-service pages' client id (their SPA app registration) when create_app_registration is false; empty: no pages."
  type        = string
  default     = ""

  validation {
    condition     = var.pages_client_id == "" || can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.pages_client_id))
    error_message = "pages_client_id must be the pages' application (client) ID, a GUID, or empty."
  }
}

variable "pages_host_name" {
  description = "The host name the self-service pages are reached at (a custom domain); empty: the Function App's default host name, <app>.azurewebsites.net."
  type        = string
  default     = ""
}

variable "pages_path" {
  description = "The path of the self-service pages on that host: their sign-in redirect URI is https://<host><pages_path>."
  type        = string
  default     = "/api/pages/"

  validation {
    condition     = startswith(var.pages_path, "/") && endswith(var.pages_path, "/")
    error_message = "pages_path must start and end with a slash, like /api/pages/."
  }
}

variable "app_role_assignments" {
  description = "App roles of the API to give with create_app_registration, e.g. a helpdesk group: [{ role = \"Writeback.Reset.Admin\", principal_id = \"<object id>\" }]."
  type = list(object({
    role         = string
    principal_id = string
  }))
  default = []

  validation {
    condition     = alltrue([for a in var.app_role_assignments : contains(["Writeback.Reset.SelfService", "Writeback.Reset.Admin", "Writeback.Change", "Writeback.Unlock", "Writeback.Expire", "Writeback.Read"], a.role)])
    error_message = "Every app_role_assignments role must be one of Writeback.Reset.SelfService, Writeback.Reset.Admin, Writeback.Change, Writeback.Unlock, Writeback.Expire, Writeback.Read."
  }

  validation {
    condition     = var.create_app_registration || length(var.app_role_assignments) == 0
    error_message = "app_role_assignments needs create_app_registration: give the roles in Entra ID instead."
  }
}

variable "alert_email" {
  description = "Where the alert rules e-mail operators (an action group). Empty: no action group; the alerts still fire and show in the portal."
  type        = string
  default     = ""
}

variable "alert_failure_rate_percent" {
  description = "The failure-rate alert fires when more than this percentage of write calls failed or stayed pending in 15 minutes."
  type        = number
  default     = 10

  validation {
    condition     = var.alert_failure_rate_percent >= 1 && var.alert_failure_rate_percent <= 100
    error_message = "alert_failure_rate_percent must be between 1 and 100."
  }
}

variable "relay_offline_minutes" {
  description = "The relay-offline alert fires for a domain from which no relay heartbeat arrived in this many minutes."
  type        = number
  default     = 15

  validation {
    condition     = contains([5, 10, 15, 30, 45], var.relay_offline_minutes)
    error_message = "relay_offline_minutes must be one of 5, 10, 15, 30, 45 (a log alert's window)."
  }
}
