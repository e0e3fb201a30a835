"""In real headless Chromium, with JavaScript and without: what a duty worker new to the service
saw wrong (issue 15 item 6). The page of a referral that could not be read shows why, who sent it
and what was sent, the sender's markup as text, and downloads the message as sent; the dashboard
says a missing urgency is treated as immediate, states in plain words, and keeps a reference on
one line; a referral's timeline has one line per alert step, its messages behind a <details>.
axe finds no WCAG 2.2 AA violation on any of these pages."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.staff.users import Role
from tests.browser.conftest import AxeLater, Tab, screenshot
from tests.browser.test_staff_pages import Staff, add_staff, sign_in
from tests.conftest import make_message, smtp_send
from tests.staff_auth import TestApps
from tests.test_staff_wording import INCOMPLETE, garbled, quarantined

pytestmark = pytest.mark.browser

TRIAGE = Staff("t.osei", "Tomi Osei", "amber lantern meadow", Role.DUTY, ("triage",))  # synthetic


@pytest.fixture
def apps(clock: FakeClock) -> TestApps:
    return TestApps(clock)


async def test_unreadable_referral_dashboard_and_timeline(tab: Tab, gateway: Gateway, apps: TestApps) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, TRIAGE)
    raw = garbled()
    unreadable = await quarantined(gateway, raw)
    code, reply = await smtp_send(gateway.smtp_port, make_message(INCOMPLETE, message_id="<inc-b@nhs.example>"))
    assert code == 250
    incomplete = reply.split()[-1]
    await gateway.process_all()
    await gateway.deliver_all()

    await sign_in(page, TRIAGE, apps)
    table = page.get_by_role("table", name="Open referrals for Front door triage team")
    row = table.get_by_role("row").filter(has=page.get_by_role("link", name=incomplete))
    await expect(row.get_by_role("cell").nth(0)).to_contain_text("Not given \N{EM DASH} treated as immediate")
    await expect(row.get_by_role("cell").nth(4)).to_have_text("Waiting for a named person to acknowledge")
    reference = row.get_by_role("rowheader")
    assert await reference.evaluate("cell => getComputedStyle(cell).whiteSpace") == "nowrap"
    await later.check(page)
    await screenshot(page, f"staff-dashboard-words-{tab.variant}")

    # The incomplete referral's timeline: one line for the alert step, its messages inside.
    await row.get_by_role("link", name=incomplete).click()
    await expect(page.locator("#status")).to_contain_text("Not given \N{EM DASH} treated as immediate")
    timeline = page.locator("#timeline")
    await expect(timeline.locator(":scope > li", has_text="Alert step 1")).to_have_count(1)
    queued = timeline.locator(":scope > li", has_text="was queued", has_not_text="Alert step")
    await expect(queued).to_have_text(re.compile("The receipt to the referrer was queued"))  # the alerts' are folded
    step = timeline.locator(":scope > li", has_text="Alert step 1")
    details = step.locator("details")
    await expect(details.get_by_text("was sent by email (attempt 1)").first).to_be_hidden()
    await step.get_by_text("Each message of this step").click()  # opens without JavaScript too
    await expect(details.get_by_text("was sent by email (attempt 1)").first).to_be_visible()
    await later.check(page)
    await screenshot(page, f"staff-referral-timeline-{tab.variant}")

    # The one that could not be read: from the dashboard it is not listed (nobody was alerted to its
    # content); the triage team gets its link in the quarantine alert.
    await expect(page.get_by_role("link", name=unreadable)).to_have_count(0)
    async with gateway.engine.connect() as conn:
        from sqlalchemy import select

        from gateway.core.schema import referrals

        rid = (await conn.execute(select(referrals.c.id).where(referrals.c.reference == unreadable))).scalar_one()
    await page.goto(f"/referrals/{rid}")
    await expect(page.get_by_role("heading", name=f"Referral {unreadable}", level=1)).to_be_visible()
    await expect(page.locator("#unreadable-reason")).to_contain_text(re.compile(r"The referral could not be read: .+"))
    sender = page.locator("#unreadable-sender")
    await expect(sender).to_contain_text("ann.example@nhs.example")
    await expect(sender).to_contain_text("Referral <b>for</b> review")  # the sender's markup, as text
    parts = page.get_by_role("table", name="The parts of the message")
    await expect(parts.get_by_role("row")).to_have_count(3)
    await expect(parts).to_contain_text("<i>encrypted</i>.asc")
    await expect(page.locator("#unreadable-text")).to_contain_text("<script>alert(1)</script>")
    await expect(page.locator("dl", has_text="Not given")).to_have_count(0)  # never every field "Not given"
    await later.check(page)
    await screenshot(page, f"staff-unreadable-{tab.variant}")

    async with page.expect_download() as info:
        await page.get_by_role("link", name="Download the message as it was sent").click()
    download = await info.value
    assert download.suggested_filename == f"referral-{unreadable}.eml"
    path = await download.path()
    assert path.read_bytes() == raw
    later.assert_none()
