"""SMS out through Twilio's REST API with the real `twilio` client.

The client is synchronous (requests), so each call runs in a thread. Errors become our outcomes:
a 429, a 5xx, a timeout or a dropped connection is temporary (retry with backoff); any other 4xx
(an invalid or unsubscribed number, a bad sender) is permanent for that message. Their text is
ours: Twilio's messages quote the number.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from gateway.config import Config
from gateway.config.sections import SmsSection
from gateway.core.keyfiles import KeyFileError
from gateway.core.keyfiles import load as load_key_file
from gateway.core.outcomes import PermanentFailure, TemporaryFailure

FINAL = frozenset({"delivered", "undelivered", "failed"})
# The client logs each request (numbers and text) at INFO: personal data has no place in our logs.
logging.getLogger("twilio").setLevel(logging.WARNING)


def auth_token(config: Config) -> str:
    """TWILIO_AUTH_TOKEN from the environment, else the token file under keys/ (mode 0600).
    Raises KeyFileError when neither is there: SMS enabled without a token must not start."""
    token = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = config.keys_dir / config.settings.sms.auth_token_file
    if not path.exists():
        raise KeyFileError(
            f"{path}: SMS is set to Twilio but there is no auth token; put it in that file (mode 0600) "
            "or in the TWILIO_AUTH_TOKEN environment variable"
        )
    token = load_key_file(path).decode().strip()
    if not token:
        raise KeyFileError(f"{path}: the Twilio auth token file is empty")
    return token


@dataclass(frozen=True)
class Status:
    status: str
    error_code: str | None


def _failure(exc: Exception, what: str) -> Exception:
    from twilio.base.exceptions import TwilioRestException  # loaded already: the client raised it

    if isinstance(exc, TwilioRestException):
        reason = f"Twilio refused to {what} (HTTP {exc.status}, error {exc.code})"
        # 429 and 5xx pass; 401/403 mean our credentials are wrong, which an administrator can
        # fix: retried, so that every alert does not die at once over a bad token.
        if exc.status in (401, 403, 429) or exc.status >= 500:
            return TemporaryFailure(reason)
        return PermanentFailure(reason)
    # A timeout or a refused connection (requests' exceptions, under the client): try again later.
    return TemporaryFailure(f"Twilio unreachable ({type(exc).__name__})")


class TwilioTransport:
    def __init__(self, sms: SmsSection, token: str, status_callback: str) -> None:
        # Imported here, only where SMS is on: twilio's client brings requests and urllib3 (about
        # 5 MiB of the gateway's memory) into every process that imports this module.
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        http = TwilioHttpClient(timeout=sms.timeout.total_seconds(), max_retries=0)
        self._client = Client(sms.account_sid, token, http_client=http)
        if sms.api_base_url:
            self._client.api.base_url = sms.api_base_url.rstrip("/")
        self._from = sms.from_number
        self._callback = status_callback

    async def send(self, mail_from: str, to: str, message: bytes) -> str:
        """Hand one SMS to Twilio; returns its message SID. `mail_from` is the email sender, unused."""
        try:
            sent = await asyncio.to_thread(
                self._client.messages.create,
                to=to,
                from_=self._from,
                body=message.decode("utf-8"),
                status_callback=self._callback,
            )
        except Exception as exc:  # noqa: BLE001
            raise _failure(exc, "send the message") from None
        return str(sent.sid)

    async def fetch(self, sid: str) -> Status:
        """The message's current status, for one whose callback never came."""
        try:
            found = await asyncio.to_thread(self._client.messages(sid).fetch)
        except Exception as exc:  # noqa: BLE001
            raise _failure(exc, "look up the message") from None
        code = found.error_code
        return Status(str(found.status), str(code) if code is not None else None)
