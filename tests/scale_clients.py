"""Clients for tests/test_scale_faults.py: SMTP senders, browsers on the public form and Twilio's
webhook calls, each a thread that sends to any of several gateway instances (as a balancer or an
MX list would) and retries as the real sender does: an MTA on a 4xx or a dropped connection, a
browser re-POSTing the same page, Twilio a 5xx webhook with the same MessageSid. What each got a
"yes" for is kept in a Ledger. Also the fake Twilio API in a thread of its own, for the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import re
import smtplib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests
from twilio.request_validator import RequestValidator

from tests.test_crash_recovery import REFERENCE_IN_REPLY, Item, transact
from tests.test_sms import PUBLIC_URL, inbound_form, twiml_texts
from tests.test_web_form import GOOD
from tests.twilio_fake import AUTH_TOKEN, FakeTwilio

HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')
RECEIPT = re.compile(r'<strong id="reference">([^<]+)</strong>')
SMS_REFERENCE = re.compile(r"\b[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}\b")
RETRY_PAUSE = (0.05, 0.3)  # seconds before a retry: the instance killed may be back by then


@dataclass
class Ledger:
    """What the clients saw, shared by every thread: per channel and key (Message-ID, form
    number, MessageSid), each reference a "yes" named."""

    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    yeses: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    attempts: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        with self.lock:
            return sum(len(refs) for refs in self.yeses.values())

    def yes(self, channel: str, key: str, reference: str) -> None:
        with self.lock:
            self.yeses[(channel, key)].append(reference)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def tried(self, channel: str, again: bool) -> None:
        with self.lock:
            self.attempts[channel] += 1
            if again:
                self.retried[channel] += 1


Attempt = Callable[[int], str | Exception | None]  # port -> reference, None: retry, Exception: give up


def until_yes(ledger: Ledger, channel: str, key: str, ports: list[int], attempt: Attempt, rng: random.Random) -> None:
    """Try at a random instance until one says yes; a "retry" result tries again (maybe elsewhere)."""
    again = False
    while time.monotonic() < ledger.deadline:
        ledger.tried(channel, again)
        result = attempt(rng.choice(ports))
        if isinstance(result, str):
            ledger.yes(channel, key, result)
            return
        if isinstance(result, Exception):
            ledger.fail(f"{channel} {key}: {result}")
            return
        again = True
        time.sleep(rng.uniform(*RETRY_PAUSE))
    ledger.fail(f"{channel} {key}: no yes before the deadline")


def guarded(ledger: Ledger, name: str, work: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001 (a thread must not die silently: the test fails on it)
            ledger.fail(f"{name} crashed: {exc!r}")

    return run


def smtp_client(ledger: Ledger, ports: list[int], items: list[Item], seed: int, pause: float) -> None:
    rng = random.Random(seed)

    def attempt(port: int) -> str | Exception | None:
        try:
            with smtplib.SMTP("127.0.0.1", port, "sender.test", timeout=15) as conn:
                conn.ehlo()
                code, text = transact(conn, item)
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            code, text = exc.smtp_code, error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        except (smtplib.SMTPException, OSError):
            return None  # killed mid-transaction, or not back yet: a real MTA tries again
        if code == 250:
            found = REFERENCE_IN_REPLY.search(text)
            return found.group(1) if found else RuntimeError(f"250 without a reference: {text!r}")
        return None if code < 500 else RuntimeError(f"permanent failure {code} {text!r}")

    for item in items:
        time.sleep(rng.uniform(0, pause))
        until_yes(ledger, "smtp", item.message_id, ports, attempt, rng)


def form_answers(n: int) -> dict[str, str]:
    """GOOD (tests/test_web_form.py) with a synthetic referrer per form; every other one immediate."""
    return GOOD | {
        "referrer_email": f"form.referrer{n}@example.org",
        "urgency": "immediate" if n % 2 else "urgent",
    }


def browser(ledger: Ledger, ports: list[int], n: int, seed: int) -> None:
    """One browser, one form: GET the form (its CSRF cookie and tokens), POST it, read the receipt.
    A POST that got no answer is sent again as it was (the page's tokens), never from a new page,
    as a browser's resubmit does; the receipt page is read back from any instance."""
    rng = random.Random(seed)
    session = requests.Session()
    session.trust_env = False  # loopback must not go through an HTTP(S)_PROXY from the environment
    # A distinct synthetic client address behind the trusted balancer: the form's flood guard
    # counts per client, and 100 forms from one address would be a flood.
    headers = {"X-Forwarded-For": f"198.51.100.{n % 250 + 1}"}
    hidden: dict[str, str] = {}
    posted = False

    def attempt(port: int) -> str | Exception | None:
        nonlocal hidden, posted
        base = f"http://127.0.0.1:{port}"
        try:
            if not hidden:
                page = session.get(base + "/refer", headers=headers, timeout=15)
                if page.status_code != 200:
                    return None
                hidden = dict(HIDDEN.findall(page.text))
            if not posted:
                answer = session.post(
                    base + "/refer",
                    data={**hidden, **form_answers(n)},
                    headers=headers,
                    allow_redirects=False,
                    timeout=15,
                )
                if answer.status_code >= 500:
                    return None
                if answer.status_code != 303:
                    return RuntimeError(f"POST answered {answer.status_code}")
                posted = True
            done = session.get(base + "/refer/done", headers=headers, timeout=15)
        except requests.RequestException:
            return None
        if done.status_code != 200:
            return None
        found = RECEIPT.search(done.text)
        return found.group(1) if found else RuntimeError("receipt page without a reference")

    try:
        until_yes(ledger, "web", f"form-{n:03d}", ports, attempt, rng)
    finally:
        session.close()


def twilio_client(ledger: Ledger, ports: list[int], texts: list[tuple[str, str, str]], seed: int, pause: float) -> None:
    """Twilio posting inbound texts (sender, body, MessageSid), signed over the public URL it calls;
    a 5xx or no answer is retried with the same MessageSid, as Twilio does."""
    rng = random.Random(seed)
    session = requests.Session()
    session.trust_env = False

    def attempt(port: int, form: dict[str, str]) -> str | Exception | None:
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/sms/inbound", form)
        try:
            answer = session.post(
                f"http://127.0.0.1:{port}/sms/inbound",
                data=form,
                headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"},
                timeout=15,
            )
        except requests.RequestException:
            return None
        if answer.status_code >= 500:
            return None
        if answer.status_code != 200:
            return RuntimeError(f"webhook answered {answer.status_code}")
        found = SMS_REFERENCE.findall(" ".join(twiml_texts(answer.text)))
        return found[0] if len(set(found)) == 1 else RuntimeError("reply without one reference")

    try:
        for sender, body, sid in texts:
            time.sleep(rng.uniform(0, pause))
            form = inbound_form(sender, body, sid)  # the same fields, and MessageSid, on every retry
            until_yes(ledger, "sms", sid, ports, functools.partial(attempt, form=form), rng)
    finally:
        session.close()


@contextlib.contextmanager
def twilio_in_thread() -> Iterator[FakeTwilio]:
    """The fake Twilio API on an event loop in its own thread: the test's own thread blocks (it
    kills and starts processes), and the gateways' SMS alerts must be answered meanwhile."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-twilio", daemon=True)
    thread.start()

    async def started() -> FakeTwilio:
        api = FakeTwilio()  # made on its loop: its asyncio.Event belongs there
        await api.start()
        return api

    try:
        api = asyncio.run_coroutine_threadsafe(started(), loop).result(timeout=30)
        try:
            yield api
        finally:
            asyncio.run_coroutine_threadsafe(api.stop(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
