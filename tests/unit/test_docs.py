"""The docs match the code: every relative link and anchor resolves, and every reason code, API
route, setting and CLI command the docs name exists in the code (and every reason, route and
setting the code has is documented)."""

from __future__ import annotations

import argparse
import re
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import pytest

from writeback.client.arguments import build_parser as build_client_parser
from writeback.cloud.auth import AuthReason
from writeback.protocol import Reason
from writeback.relay.cli import build_parser as build_relay_parser

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(
    r"(?<!!)\[(?:[^\]]|\][^(])*?\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)"
)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
FENCE_BODY = re.compile(r"^(?:```|~~~)[^\n]*\n(.*?)^(?:```|~~~)", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
REASON = re.compile(
    r"`((?:policy|old_password|user|account|directory|request|agent|transport|auth|service|domain)"
    r"\.(?!py`|md`|toml`|json`)[a-z_]+)`"
)
SETTING = re.compile(r"\bWRITEBACK_[A-Z0-9_]*[A-Z0-9]\b")
# Named in the docs on purpose though no code reads them: a throwaway app setting whose change
# makes App Service re-read Key Vault references (docs/deploy.md).
INVENTED_SETTINGS = frozenset({"WRITEBACK_CONFIG_REFRESHED"})
ROUTE = re.compile(r"/api(/(?:v1|pages)/[A-Za-z0-9_{}/.\-]*[A-Za-z0-9_}])")


@cache
def markdown_files() -> tuple[Path, ...]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],  # noqa: S607
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return tuple(ROOT / name for name in listed if "node_modules" not in name)


def docs_text() -> str:
    return "\n".join(path.read_text() for path in markdown_files())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but - and _
    removed, spaces as hyphens."""
    text = re.sub(r"`|\*", "", heading)  # emphasis and code marks
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def broken_links(path: Path) -> list[str]:
    broken = []
    text = FENCE.sub("", path.read_text())
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # an absolute URL: not checked offline
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


def code_text() -> str:
    sources = [ROOT / "function_app.py", ROOT / "host.json", ROOT / "local.settings.sample.json"]
    for folder in ("writeback", "devstack", "infra"):
        sources += [
            p for p in (ROOT / folder).rglob("*")
            if p.suffix in {".py", ".bicep", ".tf", ".json", ".toml", ".bicepparam"}
            and "node_modules" not in p.parts
        ]  # fmt: skip
    sources.append(ROOT / "relay.sample.toml")
    return "\n".join(p.read_text() for p in sources if p.is_file())


def settings_read_by_tests() -> set[str]:
    """The switches only the test runs read (environment reads and named constants in tests)."""
    read = re.compile(
        r"(?:environ\.get\(|environ\[|getenv\(|^[A-Z_]+ = )\"(WRITEBACK_[A-Z0-9_]+)\"", re.M
    )
    here = Path(__file__).resolve()
    found = {
        name
        for p in (ROOT / "tests").rglob("*.py")
        if p != here
        for name in read.findall(p.read_text())
    }
    return found | set(SETTING.findall((ROOT / "Makefile").read_text()))


def relay_environment() -> set[str]:
    """`WRITEBACK_<TABLE>_<KEY>`: relay.toml's settings from the environment, documented as
    that pattern (docs/relay.md) rather than one by one."""
    return {"WRITEBACK_" + name.replace(".", "_").upper() for name in config_keys()}


def code_reasons() -> set[str]:
    """Every public reason code the code can answer with."""
    quoted = set(re.findall(r"\"((?:request|user|service|policy|domain)\.[a-z_]+)\"", code_text()))
    return {r.value for r in Reason} | {r.value for r in AuthReason} | quoted


def routes() -> set[str]:
    """The API's routes, as function_app.py registers them (parameters named {x})."""
    text = (ROOT / "function_app.py").read_text()
    return {"/" + route for route in re.findall(r"route=\"([^\"]+)\"", text)}


def normalised(route: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", route.split("?", maxsplit=1)[0])


def matches(named: str, route: str) -> bool:
    """Whether a route as the docs write it (with example values) is `route`; a catch-all
    parameter (`{*path}`, last) takes the rest of the path."""
    given, known = named.strip("/").split("/"), normalised(route).strip("/").split("/")
    if route.rstrip("/").endswith("}") and "{*" in route.rsplit("/", 1)[-1]:
        given = [*given[: len(known) - 1], "/".join(given[len(known) - 1 :])]
    return len(given) == len(known) and all(
        k in ("{}", g) or g.startswith("{") for g, k in zip(given, known, strict=True)
    )


def config_keys() -> set[str]:
    """`table.key` names of relay.toml, which look like reason codes but are settings."""
    sample = tomllib.loads((ROOT / "relay.sample.toml").read_text())
    keys = {f"{table}.{key}" for table, values in sample.items() for key in values}
    commented = re.findall(r"^#\s*([a-z_]+)\s*=", (ROOT / "relay.sample.toml").read_text(), re.M)
    return keys | {f"{table}.{key}" for table in sample for key in commented}


class TestLinks:
    @pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
    def test_every_relative_link_and_anchor_resolves(self, path: Path) -> None:
        """Each relative link names a file that exists, and each #anchor a heading in it."""
        assert broken_links(path) == []

    def test_the_check_finds_a_broken_link_and_anchor(self, tmp_path: Path) -> None:
        """A missing file and a missing heading are both reported."""
        page = tmp_path / "page.md"
        page.write_text(
            "# Title\n\n## A `code` heading\n\n[x](gone.md) [y](#nope) [z](#a-code-heading)\n"
        )
        assert broken_links(page) == ["gone.md: no such file", "#nope: no heading #nope in page.md"]


class TestNamesInTheDocs:
    def test_every_reason_the_docs_name_exists(self) -> None:
        """A reason code in backticks in any doc is one the code answers with."""
        named = set(REASON.findall(docs_text())) - config_keys()
        assert sorted(named - code_reasons()) == []

    def test_every_reason_is_documented(self) -> None:
        """docs/reasons.md lists every outcome and refusal reason the code has."""
        page = (ROOT / "docs" / "reasons.md").read_text()
        missing = [r.value for r in (*Reason, *AuthReason) if f"`{r.value}`" not in page]
        assert missing == []

    def test_every_route_the_docs_name_exists_and_every_route_is_documented(self) -> None:
        """Routes under /api/v1 and /api/pages in the docs are function_app.py's, and docs/api.md
        names each."""
        known = routes()
        named = set(ROUTE.findall(docs_text()))
        assert sorted(n for n in named if not any(matches(n, r) for r in known)) == []
        api = set(ROUTE.findall((ROOT / "docs" / "api.md").read_text()))
        assert sorted(r for r in known if not any(matches(n, r) for n in api)) == []

    def test_every_setting_the_docs_name_exists_and_every_setting_is_documented(self) -> None:
        """A WRITEBACK_* setting in the docs is read somewhere in the code, and every one the
        code reads is named in the docs."""
        in_code = set(SETTING.findall(code_text())) | settings_read_by_tests()
        in_docs = set(SETTING.findall(docs_text())) - INVENTED_SETTINGS
        in_code -= relay_environment() - in_docs
        assert sorted(in_docs - in_code) == []
        assert sorted(in_code - in_docs) == []


# A command line: the program first (after a prompt, sudo or a directory), words that follow.
COMMAND = re.compile(r"^\s*(?:\$\s+|sudo\s+)?(?:\S*/)?(writeback(?:-relay)?)((?:\s+[a-z][a-z-]*)+)")


def commands_in(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of `parser`, by name."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def unknown_commands(text: str) -> list[str]:
    """Commands of writeback or writeback-relay, in code spans and code blocks, that do not
    exist: each word is followed down the parsers' subcommands while there are any."""
    code = "\n".join(FENCE_BODY.findall(text) + re.findall(r"`([^`\n]+)`", FENCE.sub("", text)))
    parsers = {"writeback": build_client_parser(), "writeback-relay": build_relay_parser()}
    unknown = []
    for line in code.splitlines():
        for program, words in COMMAND.findall(line.split(" #", 1)[0]):
            parser = parsers[program]
            for word in words.split():
                choices = commands_in(parser)
                if not choices:
                    break
                if word not in choices:
                    unknown.append(f"{program}{words}".strip())
                    break
                parser = choices[word]
    return unknown


class TestCommandsInTheDocs:
    def test_every_command_the_docs_show_exists(self) -> None:
        """`writeback …` and `writeback-relay …` in the docs' code name real commands."""
        assert sorted(set(unknown_commands(docs_text()))) == []

    def test_the_check_finds_a_command_that_does_not_exist(self) -> None:
        """A made-up subcommand, at either level, is reported; a real one is not."""
        text = "```sh\nwriteback-relay keys frobnicate --dir x\nwriteback reset alice@x\n```\n"
        assert unknown_commands(text) == ["writeback-relay keys frobnicate"]
