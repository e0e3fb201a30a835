"""A coordinator's legal hold and a purged referral's page in real headless Chromium, with
JavaScript and without: the hold form (its refusal of a name as the matter reference, then a
hold and its lifting), and, once the clock has moved past the retention period and the gateway
has purged, the page that says the content was removed. axe finds no WCAG 2.2 AA violation on
any page visited, and each page's screenshot is kept."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.async_api import expect

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from tests.browser.conftest import AxeLater, Tab, screenshot
from tests.browser.test_staff_pages import COORDINATOR, add_staff, ready, sign_in
from tests.conftest import referral_row
from tests.staff_auth import TestApps

pytestmark = pytest.mark.browser


@pytest.fixture
def apps(clock: FakeClock) -> TestApps:
    return TestApps(clock)


async def test_coordinator_holds_lifts_and_sees_a_purged_referral(
    tab: Tab, gateway: Gateway, clock: FakeClock, apps: TestApps
) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, COORDINATOR)
    (ref,) = await ready(gateway, ("kept-then-purged", "W1A 1AA"))
    rid = (await referral_row(gateway, ref)).id
    await sign_in(page, COORDINATOR, apps)
    await page.goto(f"/referrals/{rid}")
    await page.get_by_role("button", name="Acknowledge: I am taking responsibility for this referral").click()
    await page.get_by_role("group", name="Close with an outcome").get_by_label("No further action").check()
    await page.get_by_role("button", name="Close the referral").click()
    await expect(page.locator("#status")).to_contain_text("Closed with an outcome")  # the state, in words
    await gateway.deliver_all()  # the outcome notice: a referral with a message still to send is kept

    # A name is refused as the matter reference: the error says what to give instead.
    await page.get_by_label("Why the content must be kept").select_option(label="Court proceedings")
    await page.get_by_label("Matter reference (optional)").fill("Sam Testchild")
    await page.get_by_role("button", name="Put under a legal hold").click()
    await expect(page).to_have_title(re.compile(f"^Error: Referral {ref} – "))
    await expect(page.locator(".govuk-error-summary")).to_contain_text("never a name")
    assert (await referral_row(gateway, ref)).legal_hold is False
    await later.check(page)
    await screenshot(page, f"staff-hold-error-{tab.variant}")

    await page.get_by_label("Matter reference (optional)").fill("ZW26C00123")
    await page.get_by_role("button", name="Put under a legal hold").click()
    await expect(page.locator("#status")).to_contain_text("Yes: its content is kept past the retention period")
    timeline = page.locator("#timeline")
    await expect(timeline).to_contain_text("Legal hold set by Cora Jones: Court proceedings, matter ZW26C00123")
    await later.check(page)
    await screenshot(page, f"staff-held-{tab.variant}")

    # Held, it outlives the retention period; lifted, the next purge removes its content.
    clock.advance(timedelta(days=91))
    assert await gateway.purge_all() == 0
    await sign_in(page, COORDINATOR, apps)  # the session expired long ago
    await page.goto(f"/referrals/{rid}")
    await expect(page.locator("#child")).to_contain_text("Sam Testchild")
    await page.get_by_role("button", name="Lift the legal hold").click()
    await expect(timeline).to_contain_text("Legal hold lifted by Cora Jones")
    assert await gateway.purge_all() == 1

    await page.reload()
    day = clock.now().strftime("%d %B %Y")
    await expect(page.locator("#purged")).to_have_text(
        f"The content of this referral was removed on {day} under the retention policy (closed more than 90 days)."
    )
    await expect(page.get_by_text("Sam Testchild")).to_have_count(0)
    await expect(timeline).to_contain_text("Content removed under the retention policy")
    await expect(page.get_by_role("button", name="Put under a legal hold")).to_have_count(0)
    await later.check(page)
    await screenshot(page, f"staff-referral-purged-{tab.variant}")
    later.assert_none()
