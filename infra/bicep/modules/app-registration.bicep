// Writeback's app registrations in Entra ID, through the Microsoft Graph Bicep extension: the API
// (identifier URI, the app roles callers are given, the Writeback.Self scope the self-service
// pages ask for, v2 access tokens, the onprem_sid claim) and the pages' single-page application
// (MSAL.js, authorization code with PKCE, no secret), each with its service principal; the
// pages' tenant-wide (admin) consent; and the app roles given to groups or applications.
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
var graphScopeValues = [for scope in manifest.pages.graphScopes: scope.value]
var graphScopeAccess = [for scope in manifest.pages.graphScopes: {
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

resource roleAssignments 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [for assignment in checkedAppRoleAssignments: {
  resourceId: apiPrincipal.id
  appRoleId: manifest.api.appRoles[indexOf(roleValues, assignment.role)].id
  principalId: assignment.principalId
}]

output tenantId string = tenant().tenantId
output apiClientId string = api.appId
output identifierUri string = identifierUri
output pagesClientId string = pages.appId
