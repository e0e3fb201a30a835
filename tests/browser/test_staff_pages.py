"""The staff pages in real headless Chromium, with JavaScript and without: sign-in, its single
refusal and the lockout, sign-out; the duty dashboard, a referral's page, acknowledge and close
with an outcome (the referrer is told by email); the coordinators' report, its team filter, the
CSV export and a decision. axe finds no WCAG 2.2 AA violation on any page visited (the error
states and the 403 pages included), and each page's screenshot is kept.

Referrals arrive by real SMTP into the real gateway (FakeClock, no workers: the test drains the
pipeline and the outbox itself). Staff accounts are made with gateway.users.Users, as the
`users add` command makes them; the pages are driven through their labels and roles."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from playwright.async_api import Page, expect

from gateway.app import Gateway
from gateway.core.clock import FakeClock
from gateway.staff.users import LOCKOUT, MAX_FAILURES, REFUSED_MESSAGE, Role, Users
from tests.browser.conftest import AxeLater, Tab, screenshot
from tests.browser.staff_sign_in import sign_in_fully
from tests.conftest import maildir_messages, referral_row, send_referral
from tests.staff_auth import TestApps

pytestmark = pytest.mark.browser

REFERRER = "ann.example@nhs.example"  # tests/conftest.py's referral_body
IN_BOROUGH = "W1A 1AA"  # routed to the MASH duty team (config/gateway.toml)
OUT_OF_AREA = "SW1A 1AA"  # routed to the front door triage team (the default route)
CSV_HEADER = ["reference", "team", "state", "received", "age", "escalation", "reason"]


@dataclass(frozen=True)
class Staff:
    username: str
    name: str
    password: str  # passes gateway.passwords' policy
    role: Role
    teams: tuple[str, ...] = ()


# Synthetic people.
DUTY = Staff("d.okafor", "Dev Okafor", "violet kettle harbour", Role.DUTY, ("mash",))
COORDINATOR = Staff("c.jones", "Cora Jones", "copper willow station", Role.COORDINATOR)
LOCKED = Staff("l.khan", "Lee Khan", "silver orchard bridge", Role.DUTY, ("mash",))


async def add_staff(gw: Gateway, *people: Staff) -> None:
    # Cheap argon2 parameters, as tests/test_dashboard.py uses: the gateway verifies them, and
    # rehashes to its own on the first right password. Its default parameters cost ~0.15 s a hash
    # here, and the lockout alone takes seven.
    users = Users(gw.db, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    for person in people:
        await users.add(person.username, person.name, person.role, person.teams, person.password, gw.clock.now())


async def submit_sign_in(page: Page, username: str, password: str) -> None:
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def expect_refused(tab: Tab) -> None:
    page = tab.page
    await expect(page).to_have_title(re.compile("^Error: Sign in – "))
    summary = page.locator(".govuk-error-summary")
    if tab.javascript:
        await expect(summary).to_be_focused()  # govuk-frontend moves focus to it: read out first
    await expect(summary.get_by_role("heading", name="You could not be signed in")).to_be_visible()
    await expect(summary.get_by_role("link")).to_have_text(REFUSED_MESSAGE)  # one message, whatever the reason
    await expect(page.get_by_label("Username")).to_have_value("")  # never echoed back


@pytest.fixture
def apps(clock: FakeClock) -> TestApps:
    return TestApps(clock)


async def sign_in(page: Page, who: Staff, apps: TestApps) -> None:
    """Through every step: the password, then setting up the app or a code from it."""
    await sign_in_fully(page, apps, who.username, who.password)
    await expect(page).to_have_url(re.compile("/dashboard$"))
    await expect(page.locator("#signed-in-as")).to_have_text(who.name)


async def sign_out(page: Page) -> None:
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="You have signed out")).to_be_visible()


async def ready(gw: Gateway, *sent: tuple[str, str]) -> list[str]:
    """Referrals sent by SMTP (message id, postcode), processed and alerted; their references."""
    refs = [await send_referral(gw, mid, urgency="urgent", postcode=postcode) for mid, postcode in sent]
    assert await gw.process_all() == len(refs)
    await gw.deliver_all()
    return refs


async def test_sign_in_refusal_lockout_and_sign_out(
    tab: Tab, gateway: Gateway, clock: FakeClock, apps: TestApps
) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, DUTY, LOCKED)

    await page.goto("/dashboard")  # not signed in: sent to sign in
    await expect(page).to_have_url(re.compile("/sign-in$"))
    await expect(page).to_have_title(re.compile("^Sign in – Referral dashboard – "))
    await later.check(page)
    await screenshot(page, f"staff-sign-in-{tab.variant}")

    await submit_sign_in(page, DUTY.username, "not the password at all")
    await expect_refused(tab)
    await later.check(page)
    await screenshot(page, f"staff-sign-in-error-{tab.variant}")
    await submit_sign_in(page, "nobody.here", DUTY.password)  # an unknown user: the same words
    await expect_refused(tab)

    # Locked after MAX_FAILURES wrong passwords in a row: the right one is refused too.
    for n in range(MAX_FAILURES):
        await submit_sign_in(page, LOCKED.username, f"wrong guess number {n}")
        await expect_refused(tab)
    await submit_sign_in(page, LOCKED.username, LOCKED.password)
    await expect_refused(tab)
    locked = await Users(gateway.db).find(LOCKED.username)
    assert locked is not None and locked.locked(clock.now())
    clock.advance(LOCKOUT + timedelta(seconds=1))  # and unlocked when the lockout is over
    await sign_in(page, LOCKED, apps)
    await sign_out(page)

    await sign_in(page, DUTY, apps)
    await expect(page).to_have_title(re.compile("^Open referrals – Referral dashboard – "))
    await expect(page.get_by_role("heading", name="MASH duty team")).to_be_visible()
    await expect(page.get_by_text("No open referrals.")).to_be_visible()
    await page.goto("/sign-in")  # signed in already: the sign-in page sends you on
    await expect(page).to_have_url(re.compile("/dashboard$"))

    await sign_out(page)
    await expect(page).to_have_title(re.compile("^You have signed out – "))
    await later.check(page)
    await screenshot(page, f"staff-signed-out-{tab.variant}")
    await page.goto("/dashboard")  # the session is over
    await expect(page).to_have_url(re.compile("/sign-in$"))
    later.assert_none()


async def test_duty_worker_sees_acknowledges_and_closes_a_referral(
    tab: Tab, gateway: Gateway, home: Path, clock: FakeClock, apps: TestApps
) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, DUTY)
    mine, theirs = await ready(gateway, ("mine", IN_BOROUGH), ("theirs", OUT_OF_AREA))
    clock.advance(timedelta(minutes=30))

    await sign_in(page, DUTY, apps)
    await expect(page.get_by_role("heading", name="MASH duty team")).to_be_visible()
    table = page.get_by_role("table", name="Open referrals for MASH duty team")
    row = table.get_by_role("row").filter(has=page.get_by_role("link", name=mine))
    await expect(row).to_have_count(1)
    # Urgent, 4 working hours on MASH's schedule (Wednesday 10:00 UTC + 4h), seen 30 minutes later.
    await expect(row.get_by_role("cell").nth(2)).to_have_text("3h 30m left")
    await expect(row.get_by_role("cell").nth(0)).to_have_text("Urgent")
    await expect(page.get_by_role("link", name=theirs)).to_have_count(0)  # another team's
    await later.check(page)
    await screenshot(page, f"staff-dashboard-{tab.variant}")

    await row.get_by_role("link", name=mine).click()
    await expect(page.get_by_role("heading", name=f"Referral {mine}", level=1)).to_be_visible()
    await expect(page).to_have_url(re.compile("/referrals/[0-9a-f]{32}$"))  # nothing personal in it
    await expect(page.locator("#child")).to_contain_text("Sam Testchild")
    await expect(page.locator("#details")).to_contain_text("Zebra-crossing-unique-detail")
    await expect(page.locator("#referrer")).to_contain_text("Ann Example")
    timeline = page.locator("#timeline")
    for words in ("Received (email)", "Routed to MASH duty team", "Viewed by Dev Okafor"):
        await expect(timeline).to_contain_text(words)
    await expect(page.get_by_role("button", name="Close the referral")).to_have_count(0)  # not before ack
    await later.check(page)
    await screenshot(page, f"staff-referral-{tab.variant}")

    await page.get_by_role("button", name="Acknowledge: I am taking responsibility for this referral").click()
    await expect(page.locator("#status")).to_contain_text(
        re.compile(r"Acknowledged\s+Wednesday 25 November 2026, 10:30 GMT by Dev Okafor")
    )
    await expect(timeline).to_contain_text("Acknowledged by Dev Okafor (dashboard)")
    await expect(page.get_by_role("button", name=re.compile("^Acknowledge"))).to_have_count(0)
    assert (await referral_row(gateway, mine)).state == "acknowledged"

    await page.get_by_role("button", name="Close the referral").click()  # no outcome chosen
    await expect(page).to_have_title(re.compile(f"^Error: Referral {mine} – "))
    summary_link = page.locator(".govuk-error-summary").get_by_role("link", name="Select the outcome")
    await expect(summary_link).to_be_visible()
    # The GOV.UK error pattern: the summary links to the question's first radio, and the question
    # carries the same message inline, announced with it.
    await expect(summary_link).to_have_attribute("href", "#outcome-no_further_action")
    await expect(page.locator("#outcome-error")).to_contain_text("Select the outcome")
    await later.check(page)
    await screenshot(page, f"staff-referral-error-{tab.variant}")
    outcome = page.get_by_role("group", name="Close with an outcome")
    await outcome.get_by_label("Strategy discussion").check()
    await page.get_by_role("button", name="Close the referral").click()
    await expect(timeline).to_contain_text("Closed by Dev Okafor: Strategy discussion")
    await expect(page.locator("#status")).to_contain_text("Closed with an outcome")  # the state, in words
    await later.check(page)
    await screenshot(page, f"staff-referral-closed-{tab.variant}")

    await gateway.deliver_all()
    notices = [m for m in maildir_messages(home, REFERRER) if "outcome" in m["Subject"]]
    assert len(notices) == 1 and notices[0]["X-Referral-Reference"] == mine
    assert "Strategy discussion" in notices[0].get_content()
    assert "Sam Testchild" not in notices[0].as_string()

    await page.goto("/dashboard")
    await expect(page.get_by_role("link", name=mine)).to_have_count(0)
    await expect(page.get_by_text("No open referrals.")).to_be_visible()

    # Another team's referral, and one that does not exist, get the same 403 page.
    other = (await referral_row(gateway, theirs)).id
    for path in (f"/referrals/{other}", "/referrals/" + "0" * 32):
        response = await page.goto(path)
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", name="You cannot see this page")).to_be_visible()
        await expect(page.get_by_text("Sam Testchild")).to_have_count(0)
    await later.check(page)
    await screenshot(page, f"staff-forbidden-{tab.variant}")
    later.assert_none()


async def test_coordinator_report_filter_export_and_decision(
    tab: Tab, gateway: Gateway, clock: FakeClock, apps: TestApps
) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, DUTY, COORDINATOR)
    mash, triage = await ready(gateway, ("late-mash", IN_BOROUGH), ("late-triage", OUT_OF_AREA))
    clock.advance(timedelta(days=1))  # both well past their deadlines, neither acknowledged

    await sign_in(page, COORDINATOR, apps)
    await page.goto("/report")
    await expect(page).to_have_title(re.compile("^Referrals that need attention – "))
    items = page.get_by_role("table", name=re.compile(r"needs? attention$"))
    for reference, team in ((mash, "MASH duty team"), (triage, "Front door triage team")):
        row = items.get_by_role("row").filter(has=page.get_by_role("rowheader", name=reference))
        await expect(row).to_contain_text(team)
        await expect(row).to_contain_text("not acknowledged")
    await later.check(page)
    await screenshot(page, f"staff-report-{tab.variant}")

    await page.get_by_label("Team").select_option(label="MASH duty team")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page).to_have_url(re.compile(r"/report\?team=mash(&|$)"))  # a GET form: blank ones too
    await expect(items.get_by_role("rowheader")).to_have_text([mash])
    await expect(page.get_by_label("Team")).to_have_value("mash")

    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Download these items as CSV").click()
    download = await downloading.value
    assert re.fullmatch(r"referral-report-\d{4}-\d{2}-\d{2}-\d{4}\.csv", download.suggested_filename)
    saved = await download.path()
    with saved.open(newline="", encoding="utf-8") as f:
        header, *lines = list(csv.reader(f))
    assert header == CSV_HEADER
    assert [(line[0], line[1], line[4]) for line in lines] == [(mash, "MASH duty team", "1d 0h 00m")]
    assert "not acknowledged" in lines[0][6].lower()

    # A decision without saying what was done is refused, on the item, in the summary.
    row = items.get_by_role("row").filter(has=page.get_by_role("rowheader", name=mash))
    await row.get_by_text("Record a decision").click()
    await row.get_by_role("button", name="Record decision").click()
    await expect(page).to_have_title(re.compile("^Error: Referrals that need attention"))
    summary = page.locator(".govuk-error-summary")
    await expect(summary.get_by_role("link", name=re.compile(f"^{mash}: "))).to_be_visible()
    if tab.javascript:
        await expect(summary).to_be_focused()
    await later.check(page)
    await screenshot(page, f"staff-report-error-{tab.variant}")

    await row.get_by_label("What was done").select_option(label="Contacted the team by phone")
    await row.get_by_label("Note (optional unless you chose other)").fill("Spoke to the MASH manager")
    await row.get_by_role("button", name="Record decision").click()
    await expect(page).to_have_url(re.compile(r"/report\?team=mash$"))  # the filter is kept
    await expect(page.get_by_text(f"Decision recorded for {mash}: Contacted the team by phone")).to_be_visible()
    await expect(page.get_by_role("rowheader", name=mash)).to_have_count(0)  # off the list
    await expect(page.get_by_text("No items match these filters.")).to_be_visible()
    decided = page.locator("#recent-decisions")
    await expect(decided).to_contain_text(mash)
    await expect(decided).to_contain_text("Cora Jones")
    await later.check(page)
    await screenshot(page, f"staff-report-decided-{tab.variant}")
    await page.get_by_role("link", name="Clear filters").click()
    await expect(items.get_by_role("rowheader")).to_have_text([triage])  # the other stays

    # A duty worker may not see the report.
    await page.goto("/dashboard")
    await sign_out(page)
    await sign_in(page, DUTY, apps)
    response = await page.goto("/report")
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", name="You cannot see the report")).to_be_visible()
    await expect(page.get_by_text(mash)).to_have_count(0)
    await later.check(page)
    await screenshot(page, f"staff-report-forbidden-{tab.variant}")
    later.assert_none()


ADMIN = Staff("a.admin", "Ada Admin", "lantern meadow copper", Role.ADMIN)


async def test_administrator_adds_an_account_and_reads_the_config(tab: Tab, gateway: Gateway, apps: TestApps) -> None:
    page = tab.page
    later = AxeLater()
    await add_staff(gateway, ADMIN)
    await sign_in(page, ADMIN, apps)
    await page.get_by_role("link", name="Staff accounts").click()
    await expect(page).to_have_url(re.compile("/admin/users$"))
    await later.check(page)
    await screenshot(page, f"staff-admin-users-{tab.variant}")

    # A weak password is refused with the GOV.UK error pattern, and nothing is added.
    await page.locator("#add-username").fill("n.patel")
    await page.locator("#add-display-name").fill("Nia Patel")
    await page.get_by_label("Duty worker").check()
    await page.get_by_label("MASH duty team").check()
    await page.locator("#add-password").fill("Password12345!")
    await page.locator("#add-password-again").fill("Password12345!")
    await page.get_by_role("button", name="Add the account").click()
    summary = page.locator(".govuk-error-summary")
    await expect(summary).to_contain_text("common")
    await later.check(page)
    await screenshot(page, f"staff-admin-users-error-{tab.variant}")
    assert await Users(gateway.db).find("n.patel") is None

    await page.locator("#add-password").fill("amber tractor lighthouse")
    await page.locator("#add-password-again").fill("amber tractor lighthouse")
    await page.get_by_role("button", name="Add the account").click()
    await expect(page.locator(".govuk-notification-banner")).to_be_visible()
    added = await Users(gateway.db).find("n.patel")
    assert added is not None and added.role is Role.DUTY and added.teams == ("mash",)

    await page.get_by_role("link", name="Config").first.click()
    await expect(page).to_have_url(re.compile("/admin/config$"))
    await expect(page.get_by_text("MASH duty team").first).to_be_visible()
    assert "asha.okafor@demo-council.example" not in await page.content()  # names and channels only
    await later.check(page)
    await screenshot(page, f"staff-admin-config-{tab.variant}")
    later.assert_none()


async def test_acknowledgement_link_pages(tab: Tab, gateway: Gateway, home: Path) -> None:
    """The pages a duty worker reaches from an alert's link: confirm (GET changes nothing), done,
    and a tampered link's error page."""
    page = tab.page
    later = AxeLater()
    (reference,) = await ready(gateway, ("ack-page", IN_BOROUGH))
    (alert,) = [m for m in maildir_messages(home, "mash-duty@demo-council.example") if m["Subject"]]
    match = re.search(r"http://\S+/ack/(\S+)", alert.get_content())
    assert match
    link = f"/ack/{match.group(1)}"

    await page.goto(link)
    await expect(page.get_by_role("heading", name=f"Acknowledge referral {reference}")).to_be_visible()
    await later.check(page)
    await screenshot(page, f"ack-confirm-{tab.variant}")
    assert (await referral_row(gateway, reference)).acknowledged_at is None  # a GET changes nothing

    # An empty name is stopped by the browser itself (the field is required); the server's own
    # check of it is in tests/test_referral_flow.py.
    await expect(page.get_by_label("Your full name")).to_have_attribute("required", "")

    await page.get_by_label("Your full name").fill("Dee Worker")
    await page.get_by_role("button", name=f"Acknowledge referral {reference}").click()
    await expect(page.get_by_text("Dee Worker")).to_be_visible()
    await later.check(page)
    await screenshot(page, f"ack-done-{tab.variant}")
    assert (await referral_row(gateway, reference)).acknowledged_by == "Dee Worker"

    await page.goto(link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB"))
    await expect(page.get_by_role("heading", name="This link is not valid")).to_be_visible()
    await later.check(page)
    await screenshot(page, f"ack-invalid-{tab.variant}")
    later.assert_none()
