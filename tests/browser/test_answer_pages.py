"""The structured answers on the referral page (issue 15) in real headless Chromium, with
JavaScript and without: "not ours" to a neighbouring authority, "duplicate of", and "more
information needed", each first refused (no reason, a wrong reference) and then given. axe finds no
WCAG 2.2 AA violation on any state of the page, and each one's screenshot is kept.

Referrals arrive by real SMTP into the real gateway (FakeClock, no workers); its mail goes to the
maildir. One neighbouring authority is configured, without a key (the notice-only forward)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.core.clock import FakeClock
from tests.browser.conftest import AxeLater, Tab, screenshot
from tests.browser.test_staff_pages import DUTY, add_staff, ready, sign_in
from tests.conftest import maildir_messages, referral_row, write_config
from tests.staff_auth import TestApps

pytestmark = pytest.mark.browser

IN_BOROUGH = "W1A 1AA"  # routed to the MASH duty team (config/gateway.toml)
NEIGHBOUR = "mash@felpersham.example"


@pytest.fixture
async def gateway(home: Path, clock: FakeClock) -> AsyncIterator[Gateway]:
    extra = f'[[neighbours]]\nname = "Felpersham Council"\naddress = "{NEIGHBOUR}"\nphone = "01632 960002"\n'
    gw = Gateway(config_mod.load(write_config(home, extra)), clock=clock, workers=False)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
def apps(clock: FakeClock) -> TestApps:
    return TestApps(clock)


async def open_referral(page: Page, reference: str) -> None:
    await page.goto("/dashboard")
    await page.get_by_role("link", name=reference).click()
    await expect(page.get_by_role("heading", name=f"Referral {reference}", level=1)).to_be_visible()


async def expect_error(page: Page, reference: str, message: str, field_id: str) -> None:
    await expect(page).to_have_title(re.compile(f"^Error: Referral {reference} – "))
    link = page.locator(".govuk-error-summary").get_by_role("link", name=message)
    await expect(link).to_have_attribute("href", f"#{field_id}")  # to the field, as GOV.UK's pattern does


async def test_each_answer_refused_then_given(
    tab: Tab, gateway: Gateway, home: Path, clock: FakeClock, apps: TestApps
) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, DUTY)
    first, second, third = await ready(gateway, ("a1", IN_BOROUGH), ("a2", IN_BOROUGH), ("a3", IN_BOROUGH))
    await sign_in(page, DUTY, apps)

    # Not ours: to a neighbouring authority. No reason first: refused, nothing sent.
    await open_referral(page, first)
    not_ours = page.locator("#answer-not-ours")
    await not_ours.locator("summary").click()
    await not_ours.get_by_label("Where it should go").select_option(label="Felpersham Council (notice only: no key)")
    await later.check(page)
    await screenshot(page, f"staff-answer-not-ours-{tab.variant}")
    await not_ours.get_by_role("button", name="Pass it on").click()
    await expect_error(page, first, "Give a reason", "not-ours-reason")
    await expect(page.locator("#not-ours-reason-error")).to_contain_text("Give a reason")
    await later.check(page)
    await screenshot(page, f"staff-answer-not-ours-error-{tab.variant}")
    not_ours = page.locator("#answer-not-ours")  # open again, beside its error
    await not_ours.get_by_label("Where it should go").select_option(label="Felpersham Council (notice only: no key)")
    await not_ours.get_by_label("Reason").fill("The family live in Felpersham")
    await not_ours.get_by_role("button", name="Pass it on").click()
    timeline = page.locator("#timeline")
    await expect(timeline).to_contain_text("Not ours: forwarded to Felpersham Council by Dev Okafor")
    await expect(page.locator("#answers-given")).to_contain_text("The family live in Felpersham")
    await later.check(page)
    await screenshot(page, f"staff-answer-not-ours-given-{tab.variant}")
    await gateway.deliver_all()
    assert (await referral_row(gateway, first)).state == "forwarded"
    (notice,) = maildir_messages(home, NEIGHBOUR)
    assert first in str(notice["Subject"]) and "Sam Testchild" not in notice.as_string()

    # Duplicate of: a reference that is not one first.
    await open_referral(page, second)
    duplicate = page.locator("#answer-duplicate")
    await duplicate.locator("summary").click()
    await duplicate.get_by_label("Reference of the referral being dealt with").fill("ABCD-EFGH")
    await duplicate.get_by_label("Reason").fill("Same concern, sent twice")
    await duplicate.get_by_role("button", name="Mark as a duplicate").click()
    await expect(page).to_have_title(re.compile(f"^Error: Referral {second} – "))
    await expect(page.locator("#duplicate-of-error")).to_contain_text("Give the reference")
    link = page.locator(".govuk-error-summary").get_by_role("link", name=re.compile("^Give the reference"))
    await expect(link).to_have_attribute("href", "#duplicate-of")
    await later.check(page)
    await screenshot(page, f"staff-answer-duplicate-error-{tab.variant}")
    duplicate = page.locator("#answer-duplicate")
    await duplicate.get_by_label("Reference of the referral being dealt with").fill(third)
    await duplicate.get_by_label("Reason").fill("Same concern, sent twice")
    await duplicate.get_by_role("button", name="Mark as a duplicate").click()
    await expect(page.locator("#timeline")).to_contain_text(f"Duplicate of {third}, marked by Dev Okafor")
    await expect(page.locator("#status")).to_contain_text("duplicate")
    await later.check(page)
    await screenshot(page, f"staff-answer-duplicate-given-{tab.variant}")

    # More information needed: only once acknowledged.
    await open_referral(page, third)
    await expect(page.locator("#answer-more-info")).to_have_count(0)
    await expect(page.locator("#timeline")).to_contain_text(f"{second} was linked to it as a duplicate")
    await page.get_by_role("button", name="Acknowledge: I am taking responsibility for this referral").click()
    more = page.locator("#answer-more-info")
    await more.locator("summary").click()
    await more.get_by_role("button", name="Ask the referrer").click()
    await expect_error(page, third, "Give a reason", "more-info-reason")
    await later.check(page)
    await screenshot(page, f"staff-answer-more-info-error-{tab.variant}")
    more = page.locator("#answer-more-info")
    await more.get_by_label("Reason").fill("Which school does the child attend?")
    await more.get_by_role("button", name="Ask the referrer").click()
    await expect(page.locator("#waiting")).to_contain_text("Waiting for more information from the referrer")
    await expect(page.locator("#timeline")).to_contain_text("More information requested from the referrer")
    await later.check(page)
    await screenshot(page, f"staff-answer-more-info-given-{tab.variant}")
    later.assert_none()
