# Values derived from the inputs alone (no resource, no data source), so that the tests can
# evaluate this file with Terraform itself, offline, next to variables.tf.

locals {
  # One entry per AD domain, keyed by its lower-case name: the form every entity name uses
  # (writeback-requests-<domain>, writeback-relays-<domain encoded>).
  domains = { for d in var.domains : lower(d.name) => d }

  # Only whether a secret is given decides what Terraform creates; the values stay sensitive.
  relay_jwks = { for name, jwks in var.relay_jwks : lower(name) => jwks }
  relay_jwks_domains = {
    for name, d in local.domains : name => d.name
    if nonsensitive(lookup(local.relay_jwks, name, "") != "")
  }
  create_signing_key_secret = nonsensitive(var.cloud_signing_key != "")
  create_api_keys_secret    = var.api_keys_enabled && nonsensitive(var.api_keys != "")

  # Each (domain, relay identity) pair: that identity receives from that domain's queue only.
  relay_grants = {
    for grant in flatten([
      for name, d in local.domains : [
        for id in d.relay_principal_ids : { domain = name, principal_id = lower(id) }
      ]
    ]) : "${grant.domain}/${grant.principal_id}" => grant
  }
  # Each relay identity once, however many domains it serves: it sends outcomes and heartbeats.
  relay_principals = {
    for id in distinct(flatten([for d in var.domains : [for id in d.relay_principal_ids : lower(id)]])) :
    id => id
  }

  # Settings the code reads only when it runs locally (connection strings, a secrets directory,
  # test-only auth knobs, the Core Tools' worker runtime). Azure must not set them: the
  # Function App's app_settings leave them out on purpose (a test checks it).
  local_only_settings = [
    "AzureWebJobsStorage",
    "ServiceBusConnection",
    "WRITEBACK_SECRETS_DIR",
    "WRITEBACK_AUTH_JWKS_URL",
    "WRITEBACK_AUTH_AUTHORITY",
    "FUNCTIONS_WORKER_RUNTIME",
  ]
}
