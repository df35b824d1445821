"""infra/bicep against the Bicep compiler's own type data: resource types and API versions,
every property written (names, literal values, required and read-only ones) and every property
read back, checked in tests/infra/bicep_types.py. Nothing here reaches Azure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.infra import bicep_model, bicep_types

BICEP = bicep_model.BICEP_ROOT
DOMAINS = [domain["name"] for domain in bicep_model.example_parameters()["domains"]]
# Placeholders, not keys: every optional part of the template on, so that both sides of its
# conditions are type-checked (the example parameters leave them off).
EVERYTHING_ON = {
    "cloudSigningKey": '{"kty": "EC"}',
    "relayJwks": dict.fromkeys(DOMAINS, '{"keys": []}'),
    "apiKeys": "api-key-placeholder",
    "apiKeysEnabled": True,
    "eventSubscriptionEnabled": True,
    "appRoleAssignments": [
        {"role": "Writeback.Reset.Admin", "principalId": "44444444-4444-4444-4444-444444444444"}
    ],
}
VARIANTS = {"example parameters": {}, "everything on": EVERYTHING_ON}


def _problems(root: Path = BICEP, parameters: dict[str, object] | None = None) -> list[str]:
    return bicep_types.problems(bicep_model.load(root, parameters).declared)


def _snippet(tmp_path: Path, source: str) -> list[str]:
    """The problems of a one-file template (no parameters) written to `tmp_path`."""
    (tmp_path / "main.bicep").write_text(source, encoding="utf-8")
    (tmp_path / bicep_model.EXAMPLE_PARAMETERS).write_text('{"parameters": {}}', encoding="utf-8")
    return _problems(tmp_path)


def _mutated(tmp_path: Path, module: str, old: str, new: str) -> list[str]:
    """The problems of infra/bicep with `old` replaced by `new`, once, in `module`."""
    copy = tmp_path / "bicep"
    shutil.copytree(BICEP, copy)
    path = copy / module
    source = path.read_text(encoding="utf-8")
    assert source.count(old) == 1, f"{old!r} is not once in {module}"
    path.write_text(source.replace(old, new), encoding="utf-8")
    return _problems(copy, EVERYTHING_ON)


class TestTemplate:
    @pytest.mark.parametrize("parameters", VARIANTS.values(), ids=list(VARIANTS))
    def test_every_resource_matches_the_type_data(self, parameters: dict[str, object]) -> None:
        """Every resource type, API version, property written and property read in infra/bicep
        and its modules is one the Bicep compiler's type data accepts."""
        assert _problems(BICEP, parameters) == []

    def test_every_api_version_has_its_type_data(self) -> None:
        """Each provider and API version infra/bicep uses has its types.json in the repository."""
        model = bicep_model.load(parameters=EVERYTHING_ON)
        used = {
            (r.type.split("/", 1)[0].lower(), r.api_version)
            for r in model.declared
            if not r.type.startswith(bicep_model.GRAPH_NAMESPACE)
        }
        present = {
            (path.parts[-3], path.parts[-2]) for path in bicep_types.TYPES_ROOT.rglob("types.json")
        }
        assert used <= present, sorted(used - present)

    def test_every_type_data_file_is_used(self) -> None:
        """No types.json is kept for a provider or API version infra/bicep no longer uses."""
        model = bicep_model.load(parameters=EVERYTHING_ON)
        used = {
            (r.type.split("/", 1)[0].lower(), r.api_version)
            for r in model.declared
            if not r.type.startswith(bicep_model.GRAPH_NAMESPACE)
        }
        present = {
            (path.parts[-3], path.parts[-2]) for path in bicep_types.TYPES_ROOT.rglob("types.json")
        }
        assert present <= used, sorted(present - used)

    def test_the_check_sees_modules_loops_and_reads(self) -> None:
        """The checked resources include module bodies, every loop instance, `existing`
        declarations and the property paths the outputs read."""
        model = bicep_model.load(parameters=EVERYTHING_ON)
        files = {r.file for r in model.declared}
        assert files == {p.relative_to(BICEP).as_posix() for p in bicep_model.bicep_files()} - {
            "main.bicep"
        }
        queues = [r for r in model.declared if r.symbol == "requestQueues" and not r.existing]
        assert len(queues) == len(DOMAINS)
        (site,) = [r for r in model.declared if r.type == "Microsoft.Web/sites" and not r.existing]
        assert {("properties", "defaultHostName"), ("identity", "principalId")} <= site.reads


class TestReportsBrokenTemplates:
    """Each kind of disagreement is reported, in a snippet and in the real template."""

    NAMESPACE = """
resource ns 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: 'sbns-writeback'
  location: 'westeurope'
  sku: {
    name: 'Standard'
  }
  properties: {
    PROPERTY
  }
}
output endpoint string = ns.READ
"""

    def _namespace(self, tmp_path: Path, property_line: str, read: str = "name") -> list[str]:
        source = self.NAMESPACE.replace("PROPERTY", property_line).replace("READ", read)
        return _snippet(tmp_path, source)

    def test_a_valid_snippet_passes(self, tmp_path: Path) -> None:
        """The snippet the other cases break is itself clean, so each report is the break's."""
        assert self._namespace(tmp_path, "minimumTlsVersion: '1.2'") == []

    def test_unknown_property(self, tmp_path: Path) -> None:
        """A property the type does not have is reported with its path."""
        (problem,) = self._namespace(tmp_path, "disableLocalAuthentication: true")
        assert "properties.disableLocalAuthentication: no such property" in problem

    def test_wrong_enum_value(self, tmp_path: Path) -> None:
        """A literal outside the property's string union is reported with the allowed values."""
        (problem,) = self._namespace(tmp_path, "minimumTlsVersion: '1.3'")
        assert "properties.minimumTlsVersion: '1.3' is not one of '1.0', '1.1', '1.2'" in problem

    def test_wrong_scalar_type(self, tmp_path: Path) -> None:
        """A string where the type wants a boolean is reported."""
        (problem,) = self._namespace(tmp_path, "disableLocalAuth: 'true'")
        assert "properties.disableLocalAuth: 'true' is not boolean" in problem

    def test_read_only_property_written(self, tmp_path: Path) -> None:
        """Writing a property Azure sets (read-only in the type data) is reported."""
        (problem,) = self._namespace(tmp_path, "serviceBusEndpoint: 'https://x/'")
        assert "properties.serviceBusEndpoint: read-only" in problem

    def test_property_name_in_another_case(self, tmp_path: Path) -> None:
        """A property name that matches only case-insensitively is reported, though Azure
        would accept it."""
        (problem,) = self._namespace(tmp_path, "DisableLocalAuth: true")
        assert "the type data spells it disableLocalAuth" in problem

    def test_unknown_output_path(self, tmp_path: Path) -> None:
        """Reading a property the type does not have (an output path) is reported."""
        (problem,) = self._namespace(tmp_path, "", read="properties.endpoint")
        assert "reads properties.endpoint: no such property" in problem

    def test_missing_required_property(self, tmp_path: Path) -> None:
        """A resource without a property the type requires is reported."""
        problems = _snippet(
            tmp_path,
            "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n"
            "  name: 'stwriteback'\n  location: 'westeurope'\n  kind: 'StorageV2'\n}\n",
        )
        assert problems == [
            "main.bicep st (Microsoft.Storage/storageAccounts@2023-05-01): sku: required, not set"
        ]

    def test_unknown_resource_type_and_missing_api_version(self, tmp_path: Path) -> None:
        """A type the provider does not have, and an API version with no type data in the
        repository, are both reported; the second names the file to copy."""
        problems = _snippet(
            tmp_path,
            "resource a 'Microsoft.ServiceBus/namespaces/queue@2024-01-01' = {\n  name: 'q'\n}\n"
            "resource b 'Microsoft.ServiceBus/namespaces@2099-01-01' = {\n  name: 'n'\n}\n",
        )
        assert len(problems) == 2
        assert "unknown resource type Microsoft.ServiceBus/namespaces/queue@" in problems[0]
        assert "no type data for microsoft.servicebus API version 2099-01-01" in problems[1]
        assert "microsoft.servicebus/2099-01-01/types.json" in problems[1]

    def test_enum_inside_a_module(self, tmp_path: Path) -> None:
        """A wrong literal deep inside a module's resource (the Flex runtime) is reported."""
        problems = _mutated(
            tmp_path, "modules/functionapp.bicep", "type: 'blobContainer'", "type: 'blob'"
        )
        assert len(problems) == 1
        assert "functionAppConfig.deployment.storage.type: 'blob' is not one of" in problems[0]

    def test_property_inside_a_loop(self, tmp_path: Path) -> None:
        """A misspelt property of a looped resource (the request queues) is reported once."""
        problems = _mutated(
            tmp_path,
            "modules/servicebus.bicep",
            "    requiresDuplicateDetection: true\n",
            "    requireDuplicateDetection: true\n",
        )
        assert len(problems) == 1
        assert "requestQueues" in problems[0]
        assert "properties.requireDuplicateDetection: no such property" in problems[0]

    def test_output_path_of_a_module(self, tmp_path: Path) -> None:
        """A misspelt output path (`site.properties.defaultHostname`) is reported."""
        problems = _mutated(
            tmp_path,
            "modules/functionapp.bicep",
            "site.properties.defaultHostName",
            "site.properties.defaultHostname",
        )
        assert problems == [
            "modules/functionapp.bicep site (Microsoft.Web/sites@2024-04-01): reads "
            "properties.defaultHostname: the type data spells it defaultHostName"
        ]

    def test_discriminated_destination(self, tmp_path: Path) -> None:
        """A property of another Event Grid destination kind is reported for this one."""
        problems = _mutated(
            tmp_path,
            "modules/eventgrid-subscription.bicep",
            "        maxEventsPerBatch: 1\n",
            "        maxEventsPerBatch: 1\n        endpointUrl: 'https://example.com'\n",
        )
        assert len(problems) == 1
        assert "properties.destination.properties.endpointUrl: no such property" in problems[0]


GRAPH_APP = """
extension microsoftGraphV1

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: 'writeback-api-test'
  displayName: 'Writeback API'
  PROPERTY
}
output appId string = app.READ
"""


class TestGraphResources:
    """The app registrations against the Microsoft Graph Bicep extension's own type data
    (microsoftgraph/msgraph-bicep-types, the release bicepconfig.json names)."""

    def _app(self, tmp_path: Path, property_line: str = "", read: str = "appId") -> list[str]:
        source = GRAPH_APP.replace("PROPERTY", property_line).replace("READ", read)
        return _snippet(tmp_path, source)

    def test_every_graph_resource_is_checked(self) -> None:
        """The applications, service principals (the Graph one `existing`), consent grants and
        app role assignments are all among the checked resources, against Graph's types."""
        model = bicep_model.load(parameters=EVERYTHING_ON)
        graph = {
            (r.type, r.existing)
            for r in model.declared
            if r.type.startswith(bicep_model.GRAPH_NAMESPACE)
        }
        assert graph == {
            ("Microsoft.Graph/applications", False),
            ("Microsoft.Graph/servicePrincipals", False),
            ("Microsoft.Graph/servicePrincipals", True),
            ("Microsoft.Graph/oauth2PermissionGrants", False),
            ("Microsoft.Graph/appRoleAssignedTo", False),
        }
        known = bicep_types.resource_types(bicep_types.GRAPH_TYPES_ROOT)
        assert {f"{t}@v1.0".lower() for t, _ in graph} <= set(known)

    def test_one_release_is_vendored(self) -> None:
        """Exactly one release of the v1.0 types is kept: the one bicepconfig.json names."""
        releases = [p.parent.name for p in bicep_types.GRAPH_TYPES_ROOT.rglob("v1.0/*/types.json")]
        config = (BICEP / "bicepconfig.json").read_text()
        assert len(releases) == 1
        assert f"microsoftgraph/v1.0:{releases[0]}" in config

    def test_a_valid_graph_snippet_passes(self, tmp_path: Path) -> None:
        """The application snippet the other cases break is itself clean."""
        assert self._app(tmp_path, "isFallbackPublicClient: false") == []

    def test_unknown_graph_property(self, tmp_path: Path) -> None:
        """A property applications do not have is reported with its path."""
        (problem,) = self._app(tmp_path, "spa: {\n    redirectUri: 'https://x/'\n  }")
        assert "spa.redirectUri: no such property" in problem

    def test_graph_property_of_the_wrong_type(self, tmp_path: Path) -> None:
        """A string where Graph's type wants an integer is reported."""
        (problem,) = self._app(tmp_path, "api: {\n    requestedAccessTokenVersion: '2'\n  }")
        assert "api.requestedAccessTokenVersion: '2' is not integer" in problem

    def test_graph_read_only_property_written(self, tmp_path: Path) -> None:
        """Writing appId, which Entra ID assigns, is reported."""
        (problem,) = self._app(tmp_path, "appId: '00000000-0000-0000-0000-000000000000'")
        assert "appId: read-only" in problem

    def test_graph_unknown_read(self, tmp_path: Path) -> None:
        """Reading a property applications do not have is reported."""
        (problem,) = self._app(tmp_path, read="clientId")
        assert "reads clientId: no such property" in problem

    def test_graph_type_not_in_the_release(self, tmp_path: Path) -> None:
        """A Graph resource type the vendored release does not have is reported."""
        source = GRAPH_APP.replace("applications@v1.0", "applicationTemplates@v1.0")
        (problem,) = _snippet(tmp_path, source.replace("PROPERTY", "").replace("READ", "id"))
        assert "unknown resource type Microsoft.Graph/applicationTemplates@v1.0" in problem

    @pytest.mark.parametrize(
        ("application", "value"), [("pages", "false"), ("adminClient", "true")]
    )
    def test_break_in_the_real_module(self, tmp_path: Path, application: str, value: str) -> None:
        """A misspelt property of the real pages or admin client application is reported."""
        problems = _mutated(
            tmp_path,
            "modules/app-registration.bicep",
            f"isFallbackPublicClient: {value}",
            f"isPublicClient: {value}",
        )
        assert len(problems) == 1
        assert application in problems[0]
        assert "isPublicClient: no such property" in problems[0]

    def test_break_in_the_manifest_is_reported(self, tmp_path: Path) -> None:
        """A misspelt key in the manifest the module loads (loadJsonContent) is reported too:
        the manifest's values are checked where the module writes them."""
        copy = tmp_path / "bicep"
        shutil.copytree(BICEP, copy)
        manifest = copy / "manifest.json"
        text = bicep_model.MANIFEST.read_text(encoding="utf-8")
        assert text.count('"allowedMemberTypes"') == 6
        manifest.write_text(text.replace('"allowedMemberTypes"', '"memberTypes"', 1))
        module = copy / "modules" / "app-registration.bicep"
        source = module.read_text(encoding="utf-8")
        old = "'../../../writeback/entra/app-registration.json'"
        assert source.count(old) == 1
        module.write_text(source.replace(old, "'../manifest.json'"))
        problems = _problems(copy, EVERYTHING_ON)
        assert any("appRoles[0].memberTypes: no such property" in p for p in problems), problems
