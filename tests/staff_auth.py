"""Signing staff in through the real two-step pages, as a person with an authenticator app would:
the secret is read off the enrolment page (the text shown for typing into an app by hand), and every
code is computed from it by pyotp (gateway.staff.totp.code_at) for the clock's current time-step.

Nothing is bypassed: the password page, the code page, the enrolment page and the recovery codes
page are all posted to, with their CSRF tokens. A code is accepted once, so with a FakeClock that
does not move a helper would run out of fresh codes: `TestApps.code` then moves the clock on to the
next 30-second step, as time would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from html import unescape

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from gateway.core.clock import FakeClock
from gateway.staff import totp
from gateway.web.session import CSRF_FIELD

Client = TestClient[web.Request, web.Application]


def csrf_of(html: str) -> str:
    match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def secret_on(html: str) -> str:
    """The setup key as the enrolment page shows it, without its spaces."""
    match = re.search(r'<code id="secret"[^>]*>([A-Z2-7 ]+)</code>', html)
    assert match, html
    return match.group(1).replace(" ", "")


def recovery_codes_on(html: str) -> list[str]:
    block = re.search(r'<ul class="govuk-list" id="recovery-codes">(.*?)</ul>', html, re.S)
    assert block, html
    return [unescape(c) for c in re.findall(r"<code>([^<]+)</code>", block.group(1))]


@dataclass
class TestApps:
    """Everyone's authenticator app in one test: the secret each enrolled with, the last time-step
    a code was used for, and the recovery codes they saved."""

    clock: FakeClock
    secrets: dict[str, str] = field(default_factory=dict)
    last_step: dict[str, int] = field(default_factory=dict)
    recovery: dict[str, list[str]] = field(default_factory=dict)

    __test__ = False  # not a test class, whatever its name

    def code(self, username: str) -> str:
        """A code the app shows now that has not been used yet (the step before, now or after)."""
        last = self.last_step.get(username, 0)
        now = totp.step_of(self.clock.now())
        if now + 1 <= last:  # every code in the drift window used: wait for the next step
            self.clock.advance(timedelta(seconds=totp.STEP_SECONDS * (last - now)))
            now = totp.step_of(self.clock.now())
        step = max(now - 1, last + 1)
        self.last_step[username] = step
        return totp.code_at(self.secrets[username], step)


async def _form(client: Client, path: str) -> str:
    response = await client.get(path, allow_redirects=False)
    text = await response.text()
    assert response.status == 200, (path, response.status, text)
    return text


async def sign_in(client: Client, apps: TestApps, username: str, password: str) -> ClientResponse:
    """Sign in through every step; the answer to the last POST (303 to /dashboard when signed in,
    or the refusal of the password page)."""
    token = csrf_of(await _form(client, "/sign-in"))
    response = await client.post(
        "/sign-in", data={CSRF_FIELD: token, "username": username, "password": password}, allow_redirects=False
    )
    while response.status == 303 and response.headers["Location"].startswith("/sign-in/"):
        path = response.headers["Location"]
        html = await _form(client, path)
        if path == "/sign-in/authenticator":
            apps.secrets[username] = secret_on(html)
            apps.last_step.pop(username, None)
            data = {"code": apps.code(username)}
        elif path == "/sign-in/code":
            data = {"code": apps.code(username)}
        else:
            assert path == "/sign-in/recovery-codes", path
            apps.recovery[username] = recovery_codes_on(html)
            data = {"saved": "yes"}
        response = await client.post(path, data={CSRF_FIELD: csrf_of(html), **data}, allow_redirects=False)
    return response
