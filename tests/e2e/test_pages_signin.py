"""The pages in headless Chromium, signed in for real: the user signs in at the local Entra ID
stand-in (devstack/entra.py, the stack's own tenant and app registrations), and every action goes
through the whole local pipeline (Functions host, Service Bus stand-in, relay, Samba DC), checked
in AD afterwards. One stand-in, host and browser serve the module; each test has its own users.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from devstack import cloud, entra, entra_stack, entra_users, localstack, seed, tls
from tests.e2e.conftest import LocalCloud, healthy, wait_until
from tests.testbed import TestBed

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
# Each run keeps its screenshots under .devstack/screenshots; the docs' own (docs/images) are
# replaced only when asked (WRITEBACK_UPDATE_SCREENSHOTS=1), since each run names other users.
IMAGES = ROOT / (
    "docs/images" if os.environ.get("WRITEBACK_UPDATE_SCREENSHOTS") else ".devstack/screenshots"
)
SECONDS = 20  # how long a page may take to answer: sign-in redirects, or the relay's outcome


@dataclass(frozen=True)
class Person:
    """A test user: the AD account and the cloud user that signs in for it."""

    account: seed.Account
    cloud: entra_users.CloudUser


@dataclass
class Site:
    """The signed-in stack: the pages' URL, the users the stand-in knows, the DC."""

    url: str
    people: dict[str, Person]
    testbed: TestBed


def person(testbed: TestBed, admin: ldap3.Connection, role: str) -> Person:
    """A fresh AD user and its synchronized cloud user (SID as onprem_sid). The alias user's
    cloud UPN differs from AD's; the helpdesk user holds the helpdesk's roles."""
    domain = testbed.domain
    account = seed.create_user(
        admin, domain.users_ou, domain.dns_domain, seed.unique_name(f"pg-{role}")
    )
    other_upn = f"{account.sam}@{entra_users.CLOUD_SUFFIX}" if role == "alias" else None
    roles = entra_users.HELPDESK_ROLES if role == "helpdesk" else entra_users.SELF_ROLES
    return Person(
        account,
        entra_users.CloudUser(
            username=other_upn or account.upn, name=f"Pages {role.title()}",
            oid=str(uuid.uuid4()), password=account.password,
            tap=entra_users.tap_of(account.sam), roles=roles,
            onprem_sid=seed.object_sid(admin, account.dn), ad_upn=account.upn,
        ),
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(
    local_cloud: LocalCloud, testbed: TestBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The local stack's pages on their own Functions host, with the stack's sign-in settings
    (entra_stack.api_settings) pointing at a stand-in that knows this module's users."""
    state = tmp_path_factory.mktemp("pages-signin")
    files = tls.issue_server_certificate(state / "tls", [entra_stack.HOST], ("127.0.0.1",))
    port, api_port = cloud.free_port(), cloud.free_port()
    sign_in = entra_stack.SignInStandIn(state / "entra.json", files, port)
    tenant = entra_stack.tenant(api_port, port)
    admin = testbed.dc.admin_connection()
    try:
        roles = ("change", "alias", "forgot", "unlock", "helpdesk", "target")
        people = {role: person(testbed, admin, role) for role in roles}
    finally:
        admin.unbind()
    origins = entra_stack.pages_origins(api_port)
    app = entra.create_app(tenant, [p.cloud for p in people.values()], origins)
    settings = {**local_cloud.settings, **sign_in.api_settings()}
    local_cloud.start_relay()
    wait_until(lambda: healthy(local_cloud, "ok"), 30, "the relay's heartbeat")
    with entra.serving(app, files, port):
        host = cloud.start_host(settings, api_port, local_cloud.logs / "pages-host.log")
        try:
            pages = localstack.pages_url(api_port)  # where `./run demo` sends a person
            yield Site(pages.removesuffix("/api/pages/"), people, testbed)
        finally:
            cloud.stop_process(host)


def text_of(browser: WebDriver, element_id: str) -> str:
    """The element's text, or "" while the browser is on a page without it (the sign-in form,
    a redirect in flight): waits poll this across navigations."""
    try:
        return browser.find_element(By.ID, element_id).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def sign_in(browser: WebDriver, site: Site, page: str, who: Person, strong: bool = False) -> None:
    """Open `page` signed out, sign in as `who` on the stand-in's form (with the Temporary Access
    Pass when `strong`), and wait until the page is back, signed in, with its form."""
    browser.get(f"{site.url}/api/pages/{page}")
    browser.execute_script("sessionStorage.clear()")  # the previous test's user signs out
    browser.get(f"{site.url}/api/pages/{page}")
    wait_until(lambda: text_of(browser, "sign-in") != "", SECONDS, "the page's script")
    browser.find_element(By.ID, "sign-in").click()
    fill_sign_in_form(browser, who, strong)
    signed_in = f"Signed in as {who.cloud.username}"
    try:
        wait_until(lambda: text_of(browser, "who") == signed_in, SECONDS, "the signed-in page")
    except AssertionError as failure:
        raise AssertionError(f"{failure}: {page_state(browser)}") from None
    assert browser.current_url == f"{site.url}/api/pages/{page}"


def text_of_tag(browser: WebDriver, tag: str) -> str:
    """The text of the page's `tag` elements ("" while none is there yet)."""
    try:
        return " ".join(element.text for element in browser.find_elements(By.TAG_NAME, tag))
    except StaleElementReferenceException:
        return ""


def page_state(browser: WebDriver) -> str:
    """Where the browser is and what the page and its console say, for a failure's message."""
    console = [entry["message"] for entry in browser.get_log("browser")]
    body = browser.find_element(By.TAG_NAME, "body").text
    return f"at {browser.current_url}, showing {body!r}, console {console}"


def fill_sign_in_form(browser: WebDriver, who: Person, strong: bool) -> None:
    """Sign in on the stand-in's form, as a user does on Entra ID's sign-in page."""
    wait_until(lambda: "/oauth2/v2.0/authorize" in browser.current_url, SECONDS, "the sign-in")
    wait_until(lambda: browser.find_elements(By.NAME, "username"), SECONDS, "the sign-in form")
    username = browser.find_element(By.NAME, "username")
    username.clear()
    username.send_keys(who.cloud.username)
    browser.find_element(By.NAME, "secret").send_keys(
        who.cloud.tap if strong else who.cloud.password
    )
    box = browser.find_element(By.NAME, "strong")
    if box.is_selected() != strong:
        box.click()
    browser.find_element(By.TAG_NAME, "button").click()


def rule_states(browser: WebDriver) -> dict[str, str | None]:
    items = browser.find_elements(By.CSS_SELECTOR, "#rules li")
    return {item.get_attribute("data-rule") or "": item.get_attribute("data-met") for item in items}


def type_into(browser: WebDriver, values: dict[str, str]) -> None:
    for element_id, value in values.items():
        field = browser.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)


def outcome(browser: WebDriver) -> str:
    """The result region's text once the API has answered."""
    wait_until(
        lambda: text_of(browser, "result") not in ("", "Sending…"), SECONDS, "the API's answer"
    )
    return text_of(browser, "result")


def screenshot(browser: WebDriver, name: str, last: str = "result") -> None:
    """Save the page as `name`.png in IMAGES, scrolled so that the element `last` shows."""
    element = browser.find_element(By.ID, last)
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", element)
    IMAGES.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(IMAGES / f"{name}.png")), f"no screenshot {name}"


def new_password() -> str:
    return f"Browser-{uuid.uuid4().hex[:6]}-Pa55!"


def can_bind(site: Site, upn: str, password: str) -> bool:
    try:
        site.testbed.dc.connection(upn, password).unbind()
    except ldap3.core.exceptions.LDAPBindError:
        return False
    return True


def attribute(site: Site, dn: str, name: str) -> str:
    admin = site.testbed.dc.admin_connection()
    try:
        admin.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[name])
        return str(admin.response[0]["raw_attributes"][name][0].decode())
    finally:
        admin.unbind()


class TestChange:
    def test_rules_before_and_while_typing_then_history_then_applied(
        self, browser: WebDriver, site: Site
    ) -> None:
        """Signed in, the page lists the rules of the user's own policy before anything is typed
        (read with the user's token), marks them while typing, shows the DC's refusal of the
        current password as policy.history with guidance, and applies a good change: the new
        password binds in AD, the old one no longer does."""
        who = site.people["change"]
        sign_in(browser, site, "change", who)
        wait_until(lambda: rule_states(browser), SECONDS, "the rules")
        rules = text_of(browser, "rules")
        assert "could not be read" not in rules
        assert f"at least {seed.DOMAIN_POLICY['min_length']} characters" in rules
        assert f"last {seed.DOMAIN_POLICY['history_length']} passwords" in rules
        assert rule_states(browser)["length"] == "false"
        type_into(browser, {"new": "abc"})
        assert rule_states(browser)["length"] == "false"
        type_into(browser, {"new": "Rabbit-Hole7", "confirm": "Rabbit-Hole7"})
        assert {k: rule_states(browser)[k] for k in ("length", "categories", "match")} == {
            "length": "true", "categories": "true", "match": "true"
        }  # fmt: skip
        screenshot(browser, "pages-change", last="confirm")
        old = who.account.password
        type_into(browser, {"current": old, "new": old, "confirm": old})
        browser.find_element(By.ID, "submit").click()
        text = outcome(browser)
        assert "policy.history" in text
        assert "never used" in text
        screenshot(browser, "pages-rejected")
        new = new_password()
        type_into(browser, {"current": old, "new": new, "confirm": new})
        browser.find_element(By.ID, "submit").click()
        assert "Your password has been changed." in outcome(browser)
        assert "on-premises" in text_of(browser, "result")
        screenshot(browser, "pages-applied")
        assert can_bind(site, who.account.upn, new)
        assert not can_bind(site, who.account.upn, old)

    def test_a_user_whose_cloud_upn_differs_changes_their_ad_password(
        self, browser: WebDriver, site: Site
    ) -> None:
        """A user signed in with a cloud UPN that is no AD UPN (an alternate login ID), from the
        URL `./run demo` prints, goes to the change page, sees their rules and changes their
        password: the page names the account by the token's onprem_sid, and the AD account (its
        own UPN) binds with the new password."""
        who = site.people["alias"]
        assert who.cloud.username != who.account.upn
        sign_in(browser, site, "", who)
        browser.find_element(By.LINK_TEXT, "Change my password").click()
        wait_until(lambda: text_of(browser, "who") != "", SECONDS, "the change page, signed in")
        wait_until(lambda: "length" in rule_states(browser), SECONDS, "the user's rules")
        new = new_password()
        type_into(browser, {"current": who.account.password, "new": new, "confirm": new})
        browser.find_element(By.ID, "submit").click()
        assert "Your password has been changed." in outcome(browser)
        assert can_bind(site, who.account.upn, new)


class TestForgot:
    def test_refused_without_strong_verification_then_applied_with_it(
        self, browser: WebDriver, site: Site
    ) -> None:
        """Signed in with the password only, a new password is refused with what to do (sign in
        with strong verification) and a button that does it; signing in again there with the
        Temporary Access Pass, the same reset is applied and binds in AD."""
        who = site.people["forgot"]
        sign_in(browser, site, "forgot", who)
        new = new_password()
        type_into(browser, {"new": new, "confirm": new})
        browser.find_element(By.ID, "submit").click()
        text = outcome(browser)
        assert "auth.step_up_required" in text
        assert "strong verification" in text
        assert "Temporary Access Pass" in text
        step_up = browser.find_element(By.ID, "step-up")
        assert step_up.is_displayed()
        screenshot(browser, "pages-forgot-refused", last="step-up")
        assert not can_bind(site, who.account.upn, new)
        step_up.click()
        wait_until(lambda: "/oauth2/v2.0/authorize" in browser.current_url, SECONDS, "sign-in")
        wait_until(
            lambda: any(
                "strong verification" in m.text for m in browser.find_elements(By.TAG_NAME, "main")
            ),
            SECONDS,
            "the sign-in form asking for strong verification",
        )
        fill_sign_in_form(browser, who, strong=True)
        wait_until(
            lambda: (
                browser.current_url == f"{site.url}/api/pages/forgot"
                and text_of(browser, "who") != ""
            ),
            SECONDS,
            "the forgot page, signed in again",
        )
        type_into(browser, {"new": new, "confirm": new})
        browser.find_element(By.ID, "submit").click()
        assert "Your password has been set." in outcome(browser)
        assert can_bind(site, who.account.upn, new)


class TestUnlock:
    def test_a_locked_out_user_unlocks_their_account(self, browser: WebDriver, site: Site) -> None:
        """A user locked out in AD (failed binds up to the threshold) unlocks from the page:
        lockoutTime is 0 and the password binds again."""
        who = site.people["unlock"]
        seed.lock_out(site.testbed.dc, who.account, seed.DOMAIN_POLICY["lockout_threshold"])
        assert attribute(site, who.account.dn, "lockoutTime") not in ("", "0")
        assert not can_bind(site, who.account.upn, who.account.password)
        sign_in(browser, site, "unlock", who)
        browser.find_element(By.ID, "submit").click()
        assert "Your account has been unlocked." in outcome(browser)
        assert attribute(site, who.account.dn, "lockoutTime") == "0"
        assert can_bind(site, who.account.upn, who.account.password)


class TestHelpdesk:
    def test_the_helpdesk_resets_with_must_change(self, browser: WebDriver, site: Site) -> None:
        """Signed in with the helpdesk's roles, the helpdesk finds another user, sees their
        rules, and resets their password with must-change: pwdLastSet is 0 in AD."""
        helpdesk, target = site.people["helpdesk"], site.people["target"]
        sign_in(browser, site, "helpdesk", helpdesk)
        assert attribute(site, target.account.dn, "pwdLastSet") != "0"
        type_into(browser, {"user": target.account.upn})
        browser.find_element(By.ID, "new").click()  # leaving the field looks the user up
        wait_until(lambda: "length" in rule_states(browser), SECONDS, "the user's rules")
        new = new_password()
        type_into(browser, {"new": new, "confirm": new})
        assert browser.find_element(By.ID, "must-change").is_selected()
        browser.find_element(By.ID, "submit").click()
        assert "Done." in outcome(browser)
        assert "must choose a new password at their next sign-in" in text_of(browser, "result")
        screenshot(browser, "pages-helpdesk")
        assert attribute(site, target.account.dn, "pwdLastSet") == "0"
