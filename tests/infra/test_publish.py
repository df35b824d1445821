"""Publishing the app: what goes into the package, and what `azd up` reads.

`.funcignore` is what Core Tools (`func azure functionapp publish`) and azd leave out of the
package; its syntax is gitignore's, matched here with pathspec's GitIgnoreSpec. The package must
carry the app (function_app.py, host.json, requirements.txt, writeback/) and nothing local: no
virtual environment, no local stack (it holds a local signing key), no tests or settings.
`azure.yaml` is checked against azd's published schema (tests/infra/data/azd), and the
parameters file azd reads beside main.bicep must map onto main.bicep's parameters the way azd
substitutes environment values into it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pathspec
import pytest
import yaml

from tests.infra import bicep_model

ROOT = Path(__file__).resolve().parents[2]
AZD_SCHEMA = Path(__file__).parent / "data" / "azd" / "azure.yaml.json"
APP = ["function_app.py", "host.json", "requirements.txt"]
# Local files that must never be published, whether or not they exist in this checkout.
LOCAL = [
    ".devstack/cloud-secrets/writeback-cloud-signing-key",
    ".devstack/relay.toml",
    ".venv/lib/python3.11/site-packages/azure/functions/__init__.py",
    ".venv-checkov/bin/checkov",
    ".python_packages/lib/site-packages/x.py",
    "local.settings.json",
    "local.settings.sample.json",
    "devstack/node_modules/azurite/package.json",
    ".git/config",
    ".pytest_cache/v/cache/nodeids",
    "writeback/__pycache__/settings.cpython-311.pyc",
    "writeback.egg-info/PKG-INFO",
    ".azure/dev/.env",
]
ENV_VAR = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+)(?:=(?P<default>.*))?\}$")


@pytest.fixture(scope="module")
def ignored() -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "azure.yaml").read_text()))


@pytest.fixture(scope="module")
def mapped() -> dict[str, Any]:
    document = json.loads((ROOT / "infra" / "bicep" / "main.parameters.json").read_text())
    return {name: entry["value"] for name, entry in document["parameters"].items()}


@pytest.fixture(scope="module")
def declared() -> dict[str, Any]:
    return dict(bicep_model.parse(ROOT / "infra" / "bicep" / "main.bicep")["parameters"])


def _tracked() -> list[str]:
    git = shutil.which("git")
    assert git, "git lists the tracked files"
    listed = subprocess.run([git, "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in listed.stdout.splitlines() if (ROOT / p).is_file()]


def _imported_sources() -> set[str]:
    """The repository files a fresh interpreter loads when it imports function_app."""
    script = (
        "import json, sys; import function_app; "
        "print(json.dumps([getattr(m, '__file__', None) for m in list(sys.modules.values())]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    files = [Path(f) for f in json.loads(done.stdout.splitlines()[-1]) if f]
    inside = {f.relative_to(ROOT).as_posix() for f in files if f.is_relative_to(ROOT)}
    return {p for p in inside if not p.startswith(".venv")}


class TestFuncignore:
    @pytest.mark.parametrize("path", APP)
    def test_the_app_files_are_published(self, ignored: pathspec.GitIgnoreSpec, path: str) -> None:
        """function_app.py, host.json and requirements.txt go into the package."""
        assert not ignored.match_file(path)

    def test_the_whole_package_is_published(self, ignored: pathspec.GitIgnoreSpec) -> None:
        """Every source file of writeback/ goes into the package."""
        sources = [p for p in _tracked() if p.startswith("writeback/")]
        assert sources
        assert [p for p in sources if ignored.match_file(p)] == []

    def test_every_file_the_app_imports_is_published(self, ignored: pathspec.GitIgnoreSpec) -> None:
        """Each repository file loaded by importing function_app goes into the package."""
        imported = _imported_sources()
        assert "function_app.py" in imported
        assert [p for p in sorted(imported) if ignored.match_file(p)] == []

    @pytest.mark.parametrize("path", LOCAL)
    def test_local_files_are_left_out(self, ignored: pathspec.GitIgnoreSpec, path: str) -> None:
        """Virtual environments, the local stack, settings, caches and git stay home."""
        assert ignored.match_file(path)

    def test_everything_else_in_the_tree_is_left_out(self, ignored: pathspec.GitIgnoreSpec) -> None:
        """Of the tracked files, only the app files, writeback/ and the licence are published:
        tests, bench, devstack, docs, infra and packaging are not."""
        published = {p for p in _tracked() if not ignored.match_file(p)}
        assert {p for p in published if not p.startswith("writeback/")} == {*APP, "LICENSE"}


class TestAzureYaml:
    def test_it_follows_azds_schema(self, project: dict[str, Any]) -> None:
        """azure.yaml is valid against the schema azd publishes."""
        schema = json.loads(AZD_SCHEMA.read_text())
        jsonschema.validators.validator_for(schema)(schema).validate(project)

    def test_it_provisions_infra_bicep_and_publishes_the_function(
        self, project: dict[str, Any]
    ) -> None:
        """azd provisions infra/bicep/main.bicep and deploys this directory as a Python
        function app, built remotely, to the app tagged azd-service-name: api."""
        assert project["infra"] == {"provider": "bicep", "path": "infra/bicep", "module": "main"}
        assert (ROOT / "infra" / "bicep" / "main.bicep").exists()
        assert project["services"] == {
            "api": {"project": ".", "language": "python", "host": "function", "remoteBuild": True}
        }
        site = bicep_model.load().one("Microsoft.Web/sites")
        assert site.body["tags"] == {"azd-service-name": "api"}

    def test_the_vendored_schema_names_its_source(self) -> None:
        """The vendored schema comes with its licence and a README naming repository, path and
        commit."""
        folder = AZD_SCHEMA.parent
        assert "MIT License" in (folder / "LICENSE").read_text()
        readme = (folder / "README.md").read_text()
        assert "https://github.com/Azure/azure-dev" in readme
        assert "schemas/v1.0/azure.yaml.json" in readme
        assert re.search(r"`[0-9a-f]{40}`", readme)


class TestAzdParameters:
    """infra/bicep/main.parameters.json as azd reads it: each value is `${VAR}` or
    `${VAR=default}`; an unset variable without a default drops the parameter (main.bicep's
    default applies, or azd prompts); strings become bools, numbers, arrays or objects by the
    parameter's type."""

    ENV: ClassVar[dict[str, str]] = {
        "WRITEBACK_NAME_PREFIX": "wbtest",
        "AZURE_LOCATION": "westeurope",
        "WRITEBACK_DOMAINS_JSON": json.dumps(bicep_model.example_parameters()["domains"]),
        "WRITEBACK_AUTH_TENANT_ID": "00000000-0000-0000-0000-000000000000",
        "WRITEBACK_AUTH_AUDIENCES": "api://writeback",
    }

    def _resolve(self, mapped: dict[str, Any], declared: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, text in mapped.items():
            match = ENV_VAR.match(text)
            assert match, f"{name}: {text!r} is not an azd environment reference"
            raw = self.ENV.get(match["name"], match["default"])
            if raw is None:
                continue
            kind = declared[name]["type"]
            values[name] = raw if kind == "string" else json.loads(raw)
        return values

    def test_every_parameter_is_declared_and_every_required_one_mapped(
        self, mapped: dict[str, Any], declared: dict[str, Any]
    ) -> None:
        """The file names only main.bicep's parameters, including each one without a default,
        and maps the location to AZURE_LOCATION."""
        assert set(mapped) <= set(declared)
        required = {n for n, p in declared.items() if p.get("default") is None}
        assert required <= set(mapped)
        assert mapped["location"] == "${AZURE_LOCATION}"

    def test_the_resolved_parameters_deploy(
        self, mapped: dict[str, Any], declared: dict[str, Any]
    ) -> None:
        """With the documented environment values set, the parameters azd passes make a
        deployment main.bicep accepts, in the given region, with the given prefix."""
        model = bicep_model.load(parameters=self._resolve(mapped, declared), example=False)
        site = model.one("Microsoft.Web/sites")
        assert site.name.startswith("func-wbtest-")
        assert site.body["location"] == "westeurope"

    def test_the_docs_name_the_azd_release_that_fills_them_in(
        self, mapped: dict[str, Any], declared: dict[str, Any], project: dict[str, Any]
    ) -> None:
        """JSON text into an array or object parameter needs azd 1.23.4 (Azure/azure-dev#6694)
        and remoteBuild for Flex Consumption 1.23.5 (#6748): docs/deploy.md asks for both."""
        assert {declared[n]["type"] for n in mapped} & {"array", "object"}
        assert project["services"]["api"]["remoteBuild"] is True
        deploy = (ROOT / "docs" / "deploy.md").read_text()
        assert "**azd 1.23.5 or later**" in deploy
        assert "Azure/azure-dev#6694" in deploy
        assert "azd provision --preview" in deploy

    def test_the_documented_variables_are_the_mapped_ones(self, mapped: dict[str, Any]) -> None:
        """docs/deploy.md names every environment variable the parameters file reads."""
        names = {ENV_VAR.match(text)["name"] for text in mapped.values()}  # type: ignore[index]
        deploy = (ROOT / "docs" / "deploy.md").read_text()
        assert {n for n in names if n not in deploy} == set()


PAGE_FILES = [
    "writeback/cloud/pages/page.html",
    "writeback/cloud/pages/static/app.js",
    "writeback/cloud/pages/static/app.css",
    "writeback/cloud/pages/static/strings.js",
    "writeback/cloud/pages/static/msal-browser.min.js",
    "writeback/cloud/pages/static/msal-browser.LICENSE.txt",
]


@pytest.mark.parametrize("path", PAGE_FILES)
def test_the_pages_files_are_published(ignored: pathspec.GitIgnoreSpec, path: str) -> None:
    """The self-service pages, their scripts, styles and MSAL.js's licence go into the package."""
    assert (ROOT / path).is_file()
    assert not ignored.match_file(path)
