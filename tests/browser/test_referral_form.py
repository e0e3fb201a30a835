"""The public referral form at /refer in real headless Chromium, with JavaScript and without:
errors, success, a double click; axe finds no WCAG 2.2 AA violation on any page; screenshots of
each page are kept. Fields are filled by their labels, as a person using the form finds them."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect
from sqlalchemy import func, select

from gateway.app import Gateway
from gateway.core.reference import ALPHABET, is_valid_reference
from gateway.core.schema import referrals
from tests.browser.conftest import AxeLater, Tab, axe, screenshot

pytestmark = pytest.mark.browser

SYMBOL = f"[{ALPHABET}]"
REFERENCE = re.compile(rf"{SYMBOL}{{4}}-{SYMBOL}{{4}}")  # gateway.reference: 7KM4-Q9XC
# Required answers a blank form is missing, with the message the summary and the field show.
BLANK_ERRORS = {
    "referrer_name": "Enter your full name",
    "referrer_organisation": "Enter the name of your organisation",
    "referrer_email": "Enter an email address or a phone number, so the duty team can contact you",
    "child_born": "Select yes if the child has been born",
    "child_postcode": "Enter the postcode where the child lives, or tick 'I do not know the postcode'",
    "category": "Select the kind of concern",
    "urgency": "Select how urgent this is",
    "parents_aware": "Select yes if the parents or carers know about this referral",
    "consent_basis": "Enter how you got consent to share this, or why you are sharing without it",
    "details": "Enter the details of your concern",
}


async def stored_references(gw: Gateway) -> list[str]:
    async with gw.engine.connect() as conn:
        return list((await conn.scalars(select(referrals.c.reference))).all())


async def referral_count(gw: Gateway) -> int:
    async with gw.engine.connect() as conn:
        return int((await conn.scalar(select(func.count()).select_from(referrals))) or 0)


async def fill_valid_form(page: Page) -> None:
    await page.get_by_label("Your full name").fill("Alex Example")
    await page.get_by_label("Your role (optional)").fill("Community midwife")
    await page.get_by_label("Your organisation").fill("Example Maternity Unit")
    await page.get_by_label("Email address").fill("alex.example@example.org")
    await page.get_by_label("Phone number").fill("020 7946 0000")
    born = page.get_by_role("group", name="Has the child been born?")
    await born.get_by_label("Yes", exact=True).check()  # with JavaScript, reveals the date of birth
    await page.get_by_label("Child's full name").fill("Sam Sample")
    dob = page.get_by_role("group", name="Date of birth", exact=True)
    await dob.get_by_label("Day").fill("5")
    await dob.get_by_label("Month").fill("3")
    await dob.get_by_label("Year").fill("2021")
    await page.get_by_label("NHS number (optional)").fill("999 000 0018")
    await page.get_by_label("Address where the child lives (optional)").fill("1 Example Street\nLondon")
    await page.get_by_label("Postcode", exact=True).fill("W1A 1AA")
    await page.get_by_label("Neglect", exact=True).check()
    await page.get_by_label("Urgent", exact=True).check()
    aware = page.get_by_role("group", name="Do the parents or carers know about this referral?")
    await aware.get_by_label("Yes", exact=True).check()
    await page.get_by_label("Consent", exact=True).fill("Parent consented to the referral on the phone.")
    await page.get_by_label("Details of your concern").fill(
        "Synthetic example. Sam was seen at a home visit without enough food in the house."
    )


def count_posts(page: Page) -> list[str]:
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    return posts


async def test_blank_form_shows_the_error_summary_and_inline_errors(tab: Tab, gateway: Gateway) -> None:
    page = tab.page
    later = AxeLater()
    await page.goto("/refer")
    await expect(page).to_have_title(re.compile("^Make a safeguarding referral – "))
    await later.check(page)
    await screenshot(page, f"refer-form-{tab.variant}")

    await page.get_by_role("button", name="Send referral").click()
    await expect(page).to_have_title(re.compile("^Error: Make a safeguarding referral"))
    summary = page.locator(".govuk-error-summary")
    await expect(summary.get_by_role("heading", name="There is a problem")).to_be_visible()
    if tab.javascript:
        await expect(summary).to_be_focused()  # govuk-frontend moves focus to it: read out first
    links = summary.get_by_role("link")
    hrefs = [await link.get_attribute("href") for link in await links.all()]
    assert hrefs == [f"#{name}" for name in BLANK_ERRORS]  # in the order of the form
    for name, message in BLANK_ERRORS.items():
        await expect(summary.get_by_role("link", name=message)).to_have_attribute("href", f"#{name}")
    # Every summary link lands on a field that shows the same message inline, tied to the field
    # by aria-describedby so a screen reader reads it with the field.
    for href in hrefs:
        assert href is not None and href.startswith("#")
        target = page.locator(href)
        await expect(target).to_have_count(1)
        described = (await target.get_attribute("aria-describedby")) or ""
        error_ids = [part for part in described.split() if part.endswith("-error")]
        if not error_ids:  # radios: the message belongs to the fieldset around them
            fieldset = page.locator(f"fieldset:has({href})").last
            described = (await fieldset.get_attribute("aria-describedby")) or ""
            error_ids = [part for part in described.split() if part.endswith("-error")]
        assert len(error_ids) == 1, (href, described)
        link_text = await summary.locator(f'a[href="{href}"]').inner_text()
        await expect(page.locator(f"#{error_ids[0]}")).to_have_text(f"Error: {link_text}")
    await expect(page.get_by_label("Your full name")).to_have_class(re.compile("govuk-input--error"))

    await later.check(page)
    await screenshot(page, f"refer-errors-{tab.variant}")

    # Following a link in the summary puts the person at the field.
    await summary.get_by_role("link", name="Enter your full name").click()
    if tab.javascript:  # govuk-frontend focuses the field and scrolls its label into view
        await expect(page.get_by_label("Your full name")).to_be_focused()
    else:  # the browser follows the fragment to the field
        await expect(page).to_have_url(re.compile("#referrer_name$"))
    assert await referral_count(gateway) == 0
    later.assert_none()


async def test_valid_form_gives_the_receipt_and_stores_one_referral(tab: Tab, gateway: Gateway) -> None:
    page = tab.page
    posts = count_posts(page)
    await page.goto("/refer")
    await fill_valid_form(page)
    await page.get_by_role("button", name="Send referral").click()

    await expect(page).to_have_url(re.compile("/refer/done$"))  # nothing personal in the URL
    await expect(page).to_have_title(re.compile("^Referral sent – "))
    await expect(page.get_by_role("heading", name="Referral sent")).to_be_visible()
    reference = await page.locator("#reference").inner_text()
    assert REFERENCE.fullmatch(reference) and is_valid_reference(reference), reference
    assert await stored_references(gateway) == [reference]
    await expect(page.get_by_text("We will also email a receipt")).to_be_visible()
    assert len(posts) == 1

    await axe(page)
    await screenshot(page, f"refer-receipt-{tab.variant}")


async def test_double_click_on_send_makes_one_referral(tab: Tab, gateway: Gateway) -> None:
    page = tab.page
    posts = count_posts(page)
    await page.goto("/refer")
    await fill_valid_form(page)
    await page.get_by_role("button", name="Send referral").dblclick()

    await expect(page).to_have_url(re.compile("/refer/done$"))
    reference = await page.locator("#reference").inner_text()
    assert await stored_references(gateway) == [reference]
    if tab.javascript:
        assert len(posts) == 1  # govuk-frontend's preventDoubleClick held back the second
    else:
        # Chromium replaces the first of two quick submissions with the second (one POST here);
        # were both sent, the form's submission token would still make one referral.
        assert 1 <= len(posts) <= 2
