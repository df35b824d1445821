// Writeback's app registrations in Entra ID, through the Microsoft Graph Bicep extension: the API
// (identifier URI, the app roles callers are given, the Writeback.Self scope the self-service
// pages ask for, v2 access tokens, the onprem_sid claim), the pages' single-page application
// (MSAL.js, authorization code with PKCE, no secret) and the admin client (the `writeback`
// command line's public client: device code, or the browser with a loopback redirect; no
// secret), each with its service principal; both clients' tenant-wide (admin) consent; and the
// app roles given to groups or applications.
//
// Everything but names and URIs comes from writeback/entra/app-registration.json, which
// infra/terraform and `writeback entra app-registration` read too. The deployer needs
// Application Administrator (or Cloud Application Administrator) in Entra ID; main.bicep leaves
// this module out with createAppRegistration=false (docs/self-service.md).
//
// The extension alias is declared in ../bicepconfig.json. checkov cannot parse `extension`
// (tests/infra knows this is the one file it skips; checkov has no checks for Graph resources).

extension microsoftGraphV1

@description('The deployment\'s name prefix: it makes the names and the identifier URI unique in the tenant.')
param namePrefix string

@description('Where Entra ID may return the pages\' sign-in: https://<function app host>/api/pages/.')
param pagesRedirectUri string

@description('App roles to give: [{ role: \'Writeback.Reset.Admin\', principalId: \'<object id of a group, user or service principal>\' }].')
param appRoleAssignments array

var manifest = loadJsonContent('../../../writeback/entra/app-registration.json')
var identifierUri = 'api://${tenant().tenantId}/${manifest.api.identifierUriPrefix}${namePrefix}'
var roleValues = [for role in manifest.api.appRoles: role.value]
var graphScopeValues = [for scope in manifest.graphSignInScopes: scope.value]
var graphScopeAccess = [for scope in manifest.graphSignInScopes: {
  id: scope.id
  type: 'Scope'
}]
var assignmentRolesKnown = [for assignment in appRoleAssignments: contains(roleValues, assignment.role)]
var checkedAppRoleAssignments = contains(assignmentRolesKnown, false) ? fail('Every appRoleAssignments role must be one of ${join(roleValues, ', ')}.') : appRoleAssignments

resource api 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: '${manifest.api.uniqueNamePrefix}${namePrefix}'
  displayName: '${manifest.api.displayName} (${namePrefix})'
  signInAudience: 'AzureADMyOrg'
  identifierUris: [
    identifierUri
  ]
  appRoles: manifest.api.appRoles
  api: {
    requestedAccessTokenVersion: manifest.api.requestedAccessTokenVersion
    oauth2PermissionScopes: [
      manifest.api.scope
    ]
  }
  optionalClaims: manifest.api.optionalClaims
}

resource apiPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: api.appId
}

// A public client without a secret: MSAL.js redeems the code with PKCE from the browser.
resource pages 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: '${manifest.pages.uniqueNamePrefix}${namePrefix}'
  displayName: '${manifest.pages.displayName} (${namePrefix})'
  signInAudience: 'AzureADMyOrg'
  isFallbackPublicClient: false
  spa: {
    redirectUris: [
      pagesRedirectUri
    ]
  }
  requiredResourceAccess: [
    {
      resourceAppId: api.appId
      resourceAccess: [
        {
          id: manifest.api.scope.id
          type: 'Scope'
        }
      ]
    }
    {
      resourceAppId: manifest.graphAppId
      resourceAccess: graphScopeAccess
    }
  ]
  optionalClaims: manifest.pages.optionalClaims
}

resource pagesPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: pages.appId
}

// The command line's own public client, so that an administrator's `writeback login --auth
// device-code` (or browser) needs no consent prompt. Not a pre-authorization of another client on
// the API: Graph refuses preAuthorizedApplications naming a scope made in the same request. Its
// delegated tokens carry Writeback.Self and the user's app roles: they act on the user's own
// account unless the user holds the helpdesk's role (writeback/cloud/auth/delegation.py).
resource adminClient 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: '${manifest.adminClient.uniqueNamePrefix}${namePrefix}'
  displayName: '${manifest.adminClient.displayName} (${namePrefix})'
  signInAudience: 'AzureADMyOrg'
  isFallbackPublicClient: true
  publicClient: {
    redirectUris: manifest.adminClient.redirectUris
  }
  requiredResourceAccess: [
    {
      resourceAppId: api.appId
      resourceAccess: [
        {
          id: manifest.api.scope.id
          type: 'Scope'
        }
      ]
    }
    {
      resourceAppId: manifest.graphAppId
      resourceAccess: graphScopeAccess
    }
  ]
}

resource adminClientPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: adminClient.appId
}

resource graphPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: manifest.graphAppId
}

// Admin consent for every user: the pages may ask for Writeback.Self and sign users in without
// a consent prompt (user consent is off in many tenants).
resource pagesApiConsent 'Microsoft.Graph/oauth2PermissionGrants@v1.0' = {
  clientId: pagesPrincipal.id
  resourceId: apiPrincipal.id
  consentType: 'AllPrincipals'
  scope: manifest.api.scope.value
}

resource pagesSignInConsent 'Microsoft.Graph/oauth2PermissionGrants@v1.0' = {
  clientId: pagesPrincipal.id
  resourceId: graphPrincipal.id
  consentType: 'AllPrincipals'
  scope: join(graphScopeValues, ' ')
}

// The same consent for the admin client.
resource adminClientApiConsent 'Microsoft.Graph/oauth2PermissionGrants@v1.0' = {
  clientId: adminClientPrincipal.id
  resourceId: apiPrincipal.id
  consentType: 'AllPrincipals'
  scope: manifest.api.scope.value
}

resource adminClientSignInConsent 'Microsoft.Graph/oauth2PermissionGrants@v1.0' = {
  clientId: adminClientPrincipal.id
  resourceId: graphPrincipal.id
  consentType: 'AllPrincipals'
  scope: join(graphScopeValues, ' ')
}

resource roleAssignments 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [for assignment in checkedAppRoleAssignments: {
  resourceId: apiPrincipal.id
  appRoleId: manifest.api.appRoles[indexOf(roleValues, assignment.role)].id
  principalId: assignment.principalId
}]

output tenantId string = tenant().tenantId
output apiClientId string = api.appId
output identifierUri string = identifierUri
output pagesClientId string = pages.appId
output adminClientId string = adminClient.appId
