"""Two-factor sign-in in real headless Chromium, with JavaScript and without: setting up the
authenticator app at the first sign-in (QR code and setup key, a wrong code, the recovery codes),
signing in with a code, a wrong code and a replayed one refused, a recovery code used once, and the
"your sessions" page with "sign out everywhere else" and re-authentication. axe finds no WCAG 2.2 AA
violation on any of these pages (error states included); each page's screenshot is kept.

The "app" is tests/staff_auth.TestApps: it reads the setup key off the page, as a person types it
into their phone, and computes the codes with pyotp for the gateway's FakeClock."""

from __future__ import annotations

import re

import pytest
from argon2 import PasswordHasher
from playwright.async_api import Page, expect

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.staff.factors import RECOVERY_CODES
from gateway.staff.users import Role, Users
from gateway.web.account_pages import REAUTH_WINDOW
from gateway.web.sign_in_pages import CODE_REFUSED, ENROL_REFUSED
from tests.browser.conftest import AxeLater, Tab, open_tab, screenshot
from tests.browser.staff_sign_in import save_recovery_codes, sign_in_fully, submit_password, type_code
from tests.staff_auth import TestApps

pytestmark = pytest.mark.browser

USERNAME, NAME, PASSWORD = "d.okafor", "Dev Okafor", "violet kettle harbour"


@pytest.fixture
def apps(clock: FakeClock) -> TestApps:
    return TestApps(clock)


@pytest.fixture
async def duty_worker(gateway: Gateway) -> None:
    users = Users(gateway.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    await users.add(USERNAME, NAME, Role.DUTY, ["mash"], PASSWORD, gateway.clock.now())


async def expect_error(tab: Tab, heading: str, text: str) -> None:
    summary = tab.page.locator(".govuk-error-summary")
    if tab.javascript:
        await expect(summary).to_be_focused()  # govuk-frontend moves focus to it: read out first
    await expect(summary.get_by_role("heading", name=heading)).to_be_visible()
    await expect(summary.get_by_role("link")).to_have_text(text)
    await expect(tab.page).to_have_title(re.compile("^Error: "))


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="You have signed out")).to_be_visible()


async def test_enrolment_then_a_code_a_wrong_code_and_a_replayed_code(
    tab: Tab, gateway: Gateway, apps: TestApps, duty_worker: None
) -> None:
    page, later = tab.page, AxeLater()
    await page.goto("/sign-in")
    await submit_password(page, USERNAME, PASSWORD)
    await expect(page).to_have_url(re.compile("/sign-in/authenticator$"))
    await expect(page.get_by_role("heading", name="Set up your authenticator app")).to_be_visible()
    await expect(page.locator("svg.app-qr-code")).to_be_visible()
    await expect(page.locator("#secret")).to_have_text(re.compile(r"^([A-Z2-7]{4} ){7}[A-Z2-7]{4}$"))
    await later.check(page)
    await screenshot(page, f"staff-enrol-{tab.variant}")
    await page.goto("/dashboard")  # half signed in: nothing to see yet
    await expect(page).to_have_url(re.compile("/sign-in$"))

    await page.goto("/sign-in/authenticator")  # the same setup key, within the time allowed
    apps.secrets[USERNAME] = (await page.locator("#secret").inner_text()).replace(" ", "")
    await page.get_by_label("Code from the app").fill("000000")
    await page.get_by_role("button", name="Continue").click()
    await expect_error(tab, "There is a problem", ENROL_REFUSED)
    await later.check(page)
    await page.get_by_label("Code from the app").fill(apps.code(USERNAME))
    await page.get_by_role("button", name="Continue").click()

    await expect(page).to_have_url(re.compile("/sign-in/recovery-codes$"))
    await expect(page.locator("#recovery-codes code")).to_have_count(RECOVERY_CODES)
    await later.check(page)
    await screenshot(page, f"staff-recovery-codes-{tab.variant}")
    await save_recovery_codes(page, apps, USERNAME)
    await expect(page).to_have_url(re.compile("/dashboard$"))
    await expect(page.locator("#signed-in-as")).to_have_text(NAME)
    await sign_out(page)

    # Signing in later: the password, then a code.
    await page.goto("/sign-in")
    await submit_password(page, USERNAME, PASSWORD)
    await expect(page).to_have_url(re.compile("/sign-in/code$"))
    await expect(page).to_have_title(re.compile("^Enter the code from your authenticator app – "))
    await later.check(page)
    await screenshot(page, f"staff-sign-in-code-{tab.variant}")
    await type_code(page, "123456")
    await expect_error(tab, "You could not be signed in", CODE_REFUSED)
    await later.check(page)
    await screenshot(page, f"staff-sign-in-code-error-{tab.variant}")
    used = apps.code(USERNAME)
    await type_code(page, used)
    await expect(page).to_have_url(re.compile("/dashboard$"))
    await sign_out(page)

    # The same code again (seen over a shoulder, or replayed): refused, with the same words.
    await page.goto("/sign-in")
    await submit_password(page, USERNAME, PASSWORD)
    await type_code(page, used)
    await expect_error(tab, "You could not be signed in", CODE_REFUSED)
    await type_code(page, apps.code(USERNAME))
    await expect(page).to_have_url(re.compile("/dashboard$"))
    later.assert_none()


async def test_a_recovery_code_your_sessions_and_signing_in_again(
    tab: Tab, gateway: Gateway, apps: TestApps, clock: FakeClock, duty_worker: None
) -> None:
    page, later = tab.page, AxeLater()
    await sign_in_fully(page, apps, USERNAME, PASSWORD)
    await sign_out(page)
    recovery = apps.recovery[USERNAME][0]

    await page.goto("/sign-in")
    await submit_password(page, USERNAME, PASSWORD)
    await page.get_by_text("I cannot use my authenticator app").click()  # a <details>: no script needed
    await page.get_by_label("Recovery code").fill(recovery)
    await page.get_by_role("button", name="Use recovery code").click()
    await expect(page).to_have_url(re.compile("/account$"))
    await expect(page.locator("#recovery-left")).to_have_text(f"You have {RECOVERY_CODES - 1} unused recovery codes.")
    await expect(page.locator("#sessions tbody tr")).to_have_count(1)
    await expect(page.get_by_text("This session")).to_be_visible()
    await later.check(page)
    await screenshot(page, f"staff-account-{tab.variant}")

    # A second browser signs in too; from this one, "sign out everywhere else" ends it.
    browser = page.context.browser
    assert browser is not None
    other = await open_tab(browser, page.url.rsplit("/account", 1)[0], javascript=tab.javascript)
    await sign_in_fully(other.page, apps, USERNAME, PASSWORD)
    await expect(other.page).to_have_url(re.compile("/dashboard$"))
    await page.reload()
    await expect(page.locator("#sessions tbody tr")).to_have_count(2)
    await page.get_by_role("button", name="Sign out everywhere else").click()
    await expect(page.locator("#flash")).to_have_text("Signed out everywhere else (1 session ended).")
    await later.check(page)
    await other.page.goto("/dashboard")
    await expect(other.page).to_have_url(re.compile("/sign-in$"))
    await other.context.close()
    assert other.problems == []

    # The used recovery code does not work twice.
    await sign_out(page)
    await page.goto("/sign-in")
    await submit_password(page, USERNAME, PASSWORD)
    await page.get_by_text("I cannot use my authenticator app").click()
    await page.get_by_label("Recovery code").fill(recovery)
    await page.get_by_role("button", name="Use recovery code").click()
    await expect_error(tab, "You could not be signed in", CODE_REFUSED)
    await type_code(page, apps.code(USERNAME))
    await expect(page).to_have_url(re.compile("/dashboard$"))

    # Changing the password a while after signing in asks for the password and a code again.
    clock.advance(REAUTH_WINDOW)
    await page.get_by_role("link", name="Your account").click()
    await page.get_by_role("link", name="Change your password").click()
    await expect(page).to_have_url(re.compile(r"/account/confirm\?then=password$"))
    await expect(page.get_by_role("heading", name="Sign in again to continue")).to_be_visible()
    await later.check(page)
    await screenshot(page, f"staff-reauthenticate-{tab.variant}")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Code from your authenticator app").fill(apps.code(USERNAME))
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Change your password")).to_be_visible()
    await later.check(page)
    later.assert_none()
