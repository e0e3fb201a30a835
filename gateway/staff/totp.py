"""Time-based one-time passwords (RFC 6238) for staff sign-in, with pyotp: a 30 s step, 6 digits and
SHA-1, the parameters every authenticator app supports (others are ignored by some apps, which then
show codes that never match). A code of the step before or after is accepted too (±1 step, for a
phone clock a little off), but only for a step later than the last one accepted, so no code works
twice (the caller stores the step returned and passes it back as `last_step`).

The QR code is drawn here as SVG by segno, so the enrolment page needs no script and no image
request that could leak the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from datetime import datetime

import pyotp
import segno

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1  # steps either side of now that are accepted
_CODE = re.compile(r"^\d{6}$")


def new_secret() -> str:
    """A random base32 secret of 160 bits (RFC 4226 recommends the SHA-1 output size)."""
    return pyotp.random_base32(length=32)


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, digest=hashlib.sha1, interval=STEP_SECONDS)


def code_at(secret: str, step: int) -> str:
    """The code of time-step `step` (tests compute the code an authenticator would show with this)."""
    return _totp(secret).generate_otp(step)


def step_of(now: datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def normalise_code(text: str) -> str:
    """What people type: spaces or a hyphen in the middle ("123 456"), as some apps show it."""
    return re.sub(r"[\s-]", "", text)


def matching_step(secret: str, code: str, now: datetime, last_step: int) -> int | None:
    """The time-step whose code `code` is, if it is within the drift window and later than
    `last_step`; None otherwise (wrong, too old, or already used)."""
    code = normalise_code(code)
    if not _CODE.match(code):
        return None
    current = step_of(now)
    found = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # Every candidate is compared, in constant time, so the time taken says nothing.
        if hmac.compare_digest(code_at(secret, step), code) and step > last_step and found is None:
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app reads from the QR code."""
    return _totp(secret).provisioning_uri(name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The QR code of `uri` as an inline SVG element (no XML declaration), with a title for screen
    readers; drawn in black on white at a size phones read easily."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(
        out,
        kind="svg",
        xmldecl=False,
        svgns=True,
        scale=5,
        border=4,
        dark="#0b0c0c",
        light="#ffffff",
        title="QR code for your authenticator app",
        svgclass="app-qr-code",
        lineclass=None,
    )
    return out.getvalue().decode("ascii").strip()


def grouped(secret: str) -> str:
    """The secret in groups of four for typing into an app by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
