"""Signing in through every step in Chromium, as a person would: the password; at the first
sign-in the setup key read off the page into the "app" (tests/staff_auth.TestApps, pyotp), its code
typed back, and the recovery codes saved; later a fresh code from the app."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.staff_auth import TestApps

_STEP = re.compile(r"/sign-in/(authenticator|code|recovery-codes)$")


async def submit_password(page: Page, username: str, password: str) -> None:
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def enrol(page: Page, apps: TestApps, username: str) -> None:
    """On the set-up page: add the key to the app, and type the code it shows."""
    await expect(page).to_have_url(re.compile("/sign-in/authenticator$"))
    apps.secrets[username] = (await page.locator("#secret").inner_text()).replace(" ", "")
    apps.last_step.pop(username, None)
    await page.get_by_label("Code from the app").fill(apps.code(username))
    await page.get_by_role("button", name="Continue").click()


async def save_recovery_codes(page: Page, apps: TestApps, username: str) -> None:
    await expect(page).to_have_url(re.compile("/sign-in/recovery-codes$"))
    apps.recovery[username] = [c.strip() for c in await page.locator("#recovery-codes code").all_inner_texts()]
    await page.get_by_label("I have saved my recovery codes").check()
    await page.get_by_role("button", name="Continue").click()


async def type_code(page: Page, code: str) -> None:
    await page.get_by_label("Code", exact=True).fill(code)
    await page.get_by_role("button", name="Continue").click()


async def sign_in_fully(page: Page, apps: TestApps, username: str, password: str) -> None:
    """From the sign-in page to the page after it, through whichever steps this account needs."""
    await page.goto("/sign-in")
    await submit_password(page, username, password)
    await expect(page).to_have_url(_STEP)
    if page.url.endswith("/sign-in/authenticator"):
        await enrol(page, apps, username)
        await save_recovery_codes(page, apps, username)
    else:
        await type_code(page, apps.code(username))
