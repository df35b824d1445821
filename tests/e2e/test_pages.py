"""The self-service pages in headless Chromium, served by function_app.py on the local Functions
host, signing in against a local HTTPS authority that records what the browser sends it (the
signed-in flows, and the screenshots in the docs, are test_pages_signin.py's)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from devstack import cloud, seed
from tests.e2e.conftest import LocalCloud, wait_until
from tests.e2e.pages_browser import TENANT, Recorder, authority
from writeback.protocol import Reason

CLIENT_ID = "6f1c3d2a-1111-4222-8333-944445555666"
POLICY = {"source": "domain policy", "minLength": 9, "complexity": True, "historyLength": 24,
          "minAgeSeconds": 86400, "maxAgeSeconds": None}  # fmt: skip


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    with authority(tmp_path_factory.mktemp("authority")) as server:
        yield server


@pytest.fixture(scope="module")
def site(recorder: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pages on the local host, signing in with `recorder` as the authority."""
    settings = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "WRITEBACK_SWEEP_SCHEDULE": "0 0 0 1 1 *",
        "WRITEBACK_AUDIT_HUB": "insights-logs-auditlogs",
        "WRITEBACK_AUDIT_CONSUMER_GROUP": "$Default",
        "WRITEBACK_PAGES_CLIENT_ID": CLIENT_ID,
        "WRITEBACK_AUTH_AUTHORITY": recorder.base.rsplit("/", 1)[0],
        "WRITEBACK_AUTH_TENANT_ID": TENANT,
        "WRITEBACK_AUTH_AUDIENCES": "api://writeback-e2e",
    }
    port = cloud.free_port()
    host = cloud.start_host(settings, port, tmp_path_factory.mktemp("host") / "host.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        cloud.stop_process(host)


def open_page(browser: WebDriver, site: str, page: str) -> None:
    """Load `page` and wait until its script has filled it in; show its form as after sign-in."""
    browser.get(f"{site}/api/pages/{page}")
    wait_until(lambda: browser.find_element(By.ID, "title").text != "", 10, "the page's script")
    browser.execute_script("document.getElementById('form').hidden = false")


def rule_states(browser: WebDriver) -> dict[str, str | None]:
    items = browser.find_elements(By.CSS_SELECTOR, "#rules li")
    return {item.get_attribute("data-rule") or "": item.get_attribute("data-met") for item in items}


def csp_violations(browser: WebDriver) -> list[Any]:
    return [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def test_every_page_answer_carries_a_strict_csp(site: str, recorder: Recorder) -> None:
    """Pages, files and config come with a CSP allowing only this origin and the authority's."""
    for path in ("change", "static/app.js", "config"):
        with urllib.request.urlopen(f"{site}/api/pages/{path}") as answer:  # noqa: S310 - loopback
            policy = answer.headers["Content-Security-Policy"]
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy
        assert "frame-ancestors 'none'" in policy
        assert f"connect-src 'self' {recorder.base.rsplit('/', 1)[0]};" in policy
        assert "unsafe-inline" not in policy


@pytest.mark.parametrize("page", ["change", "forgot", "unlock", "helpdesk", ""])
def test_pages_load_without_csp_violations(browser: WebDriver, site: str, page: str) -> None:
    """Each page runs its scripts and styles under the CSP without a single violation."""
    browser.get_log("browser")
    open_page(browser, site, page)
    assert browser.find_element(By.ID, "sign-in").text == "Sign in"
    assert csp_violations(browser) == []


def test_the_rules_are_shown_before_typing(browser: WebDriver, site: str) -> None:
    """The policy's rules (length, categories, name, history, minimum age) are listed."""
    open_page(browser, site, "change")
    browser.execute_script(
        "WritebackPages.showRules(arguments[0], ['alice', 'Alice', 'Liddell'])", POLICY
    )
    text = browser.find_element(By.ID, "rules").text
    assert "at least 9 characters" in text
    assert "three of" in text
    assert "account name" in text
    assert "last 24 passwords" in text
    assert "24 hours" in text
    assert set(rule_states(browser)) == {
        "length",
        "categories",
        "name",
        "history",
        "minAge",
        "match",
    }


def test_rules_are_marked_while_typing_counting_utf16_units(browser: WebDriver, site: str) -> None:
    """Each rule turns met as the password grows; a character outside the BMP counts two."""
    open_page(browser, site, "change")
    browser.execute_script("WritebackPages.showRules(arguments[0], ['alice', 'Liddell'])", POLICY)
    field = browser.find_element(By.ID, "new")
    field.send_keys("aliceXy1")
    states = rule_states(browser)
    assert states["length"] == "false"
    assert states["categories"] == "true"
    assert states["name"] == "false"
    field.clear()
    field.send_keys("Rabbit7")
    # ChromeDriver types only BMP characters: the emoji arrives as typed text would, by input.
    browser.execute_script(
        "const f = document.getElementById('new'); f.value += '\\u{1F600}';"
        "f.dispatchEvent(new Event('input'))"
    )
    states = rule_states(browser)
    assert browser.execute_script("return document.getElementById('new').value.length") == 9
    assert states["length"] == "true"
    assert states["name"] == "true"
    browser.find_element(By.ID, "confirm").send_keys("Rabbit7")
    assert rule_states(browser)["match"] == "false"


def test_keyboard_alone_reaches_every_control(browser: WebDriver, site: str) -> None:
    """Tab moves through every visible link, field and button of the helpdesk page."""
    open_page(browser, site, "helpdesk")
    controls = browser.find_elements(By.CSS_SELECTOR, "a, input, button")
    wanted = {
        e.get_attribute("id") or e.get_attribute("href") for e in controls if e.is_displayed()
    }
    reached = set()
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(40):
        active = browser.switch_to.active_element
        reached.add(active.get_attribute("id") or active.get_attribute("href"))
        active.send_keys(Keys.TAB)
    assert {"user", "new", "confirm", "must-change", "also-unlock", "submit", "unlock", "expire",
            "history", "sign-in"} <= wanted  # fmt: skip
    assert wanted <= reached


def test_a_rejected_password_names_the_reason_with_guidance(browser: WebDriver, site: str) -> None:
    """The API's refusal shows its message, what to do, and the reason code, in a live region."""
    open_page(browser, site, "change")
    browser.execute_script("WritebackPages.showRules(arguments[0], ['alice'])", POLICY)
    answer = {"requestId": "r-1", "state": "completed", "status": "rejected",
              "reason": Reason.POLICY_HISTORY.value, "message": Reason.POLICY_HISTORY.message,
              "durationMs": 40}  # fmt: skip
    browser.execute_script("WritebackPages.render(422, arguments[0], 'change')", answer)
    result = browser.find_element(By.ID, "result")
    assert result.get_attribute("aria-live") == "polite"
    assert Reason.POLICY_HISTORY.message in result.text
    assert "never used" in result.text
    assert "policy.history" in result.text


def test_success_says_when_the_password_works_where(browser: WebDriver, site: str) -> None:
    """An applied change says it works on-premises now and in the cloud after hash sync."""
    open_page(browser, site, "change")
    answer = {"status": "applied", "state": "completed", "reason": "applied", "message": "ok"}
    browser.execute_script("WritebackPages.render(200, arguments[0], 'change')", answer)
    text = browser.find_element(By.ID, "result").text
    assert "on-premises" in text
    assert "2 minutes" in text


def test_sign_in_goes_to_the_authority_with_pkce(
    browser: WebDriver, site: str, recorder: Recorder
) -> None:
    """The sign-in button sends the browser to the authority's authorize endpoint with the
    client id, the pages' redirect URI and an S256 code challenge; MSAL keeps its state in the
    tab's sessionStorage, nothing in localStorage."""
    browser.get(f"{site}/api/pages/change")
    wait_until(lambda: browser.find_element(By.ID, "title").text != "", 10, "the page's script")
    browser.find_element(By.ID, "sign-in").send_keys(Keys.ENTER)
    wait_until(
        lambda: "/oauth2/v2.0/authorize" in browser.current_url, 15, "the authorize redirect"
    )
    url = urlsplit(browser.current_url)
    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{recorder.base}/oauth2/v2.0/authorize"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == f"{site}/api/pages/"
    assert query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert "api://writeback-e2e/Writeback.Self" in query["scope"]
    assert any(p.endswith("/openid-configuration") for p in recorder.requests)
    browser.get(f"{site}/api/pages/change")  # back in the same tab: MSAL's state is per tab
    stored = browser.execute_script(
        "return [Object.keys(localStorage), Object.keys(sessionStorage)]"
    )
    assert stored[0] == []
    assert any("msal" in key for key in stored[1])


def test_the_stacks_real_answers_render_with_guidance(
    browser: WebDriver, site: str, ready: LocalCloud, new_user: Callable[..., seed.Account]
) -> None:
    """The rules of the domain's real policy (from the policy route) and a real refusal (a
    change to the current password, refused by the relay as policy.history) show in the page."""
    user = new_user("pages")
    status, policy = api(ready, "GET", f"v1/domains/{ready.domain}/policy")
    assert status == 200
    status, answer = api(
        ready, "POST", "v1/passwords/change",
        {"user": user.upn, "oldPassword": user.password, "newPassword": user.password},
    )  # fmt: skip
    assert (status, answer["reason"]) == (422, "policy.history")
    open_page(browser, site, "change")
    browser.execute_script("WritebackPages.showRules(arguments[0], [])", policy["policy"])
    minimum = policy["policy"]["minLength"]
    assert f"at least {minimum} characters" in browser.find_element(By.ID, "rules").text
    browser.execute_script(
        "WritebackPages.render(arguments[0], arguments[1], 'change')", status, answer
    )
    text = browser.find_element(By.ID, "result").text
    assert answer["message"] in text
    assert "never used" in text


def api(stack: LocalCloud, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """One call to the stack's API with its key."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "x-functions-key": stack.api_key}
    call = urllib.request.Request(f"{stack.url}/{path}", data, headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(call, timeout=60) as response:  # noqa: S310 - loopback stack
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
