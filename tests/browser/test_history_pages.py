"""Issue 15 in real headless Chromium, with JavaScript and without: the referral page of a referral
that raised a cumulative concern shows the banner saying why, and its earlier referrals about the
same child say which identifier matched. axe finds no WCAG 2.2 AA violation on it.

Three below-urgent referrals about one synthetic child arrive by real SMTP from two organisations
(tests/test_history.py sends them the same way); a coordinator signs in through every step."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.async_api import expect

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.staff.users import Role
from tests.browser.conftest import AxeLater, Tab, screenshot
from tests.browser.test_staff_pages import Staff, add_staff, sign_in
from tests.browser.test_staff_pages import apps as apps  # the fixture: the staff's authenticator apps
from tests.staff_auth import TestApps
from tests.test_history import HEALTH, body, rid, send, settle

pytestmark = pytest.mark.browser

COORDINATOR = Staff("c.jones", "Cora Jones", "copper willow station", Role.COORDINATOR)


async def test_referral_page_with_a_cumulative_concern_and_what_matched(
    tab: Tab, gateway: Gateway, clock: FakeClock, apps: TestApps
) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, COORDINATOR)
    first = await send(gateway, "b1", body())
    clock.advance(timedelta(days=3))
    # The same child by name and date of birth only (no NHS number given this time).
    second = await send(gateway, "b2", body(nhs="", organisation=HEALTH[1]), sender=HEALTH[0])
    clock.advance(timedelta(days=3))
    third = await send(gateway, "b3", body())
    await settle(gateway)

    await sign_in(page, COORDINATOR, apps)
    await page.goto(f"/referrals/{await rid(gateway, third)}")
    await expect(page.get_by_role("heading", name=f"Referral {third}", level=1)).to_be_visible()
    banner = page.get_by_role("region", name="Cumulative concern")
    await expect(banner).to_contain_text(
        f"Cumulative concern: 3 referrals in 30 days from 2 organisations (with {first}, {second})"
    )
    await expect(banner).to_contain_text("none was urgent on its own")
    earlier = page.locator("#earlier")
    for reference, why in ((first, "same NHS number"), (second, "same name and date of birth")):
        row = earlier.get_by_role("row").filter(has=page.get_by_role("link", name=reference))
        await expect(row.get_by_role("cell").nth(4)).to_have_text(why)
    await expect(page.locator("#timeline")).to_contain_text("Cumulative concern: 3 referrals in 30 days")
    await later.check(page)
    await screenshot(page, f"staff-referral-concern-{tab.variant}")
    later.assert_none()
