"""Deliver: the transports that put one email on its way. Chosen in config.

- MaildirTransport: the embedded default when no relay is configured; one maildir per recipient
  under var/mail/, written tmp -> fsync -> rename into new/ (the stdlib `mailbox` does not fsync,
  and a message we mark sent must survive a power cut).
- SmtpRelayTransport: aiosmtplib to the council's relay; STARTTLS is required when configured,
  never opportunistic (aiosmtplib's default would send in plaintext to a relay without it).

Errors become TemporaryFailure (retry with backoff) or PermanentFailure (dead at once). Their
text is ours, never the relay's: a relay's reply can quote addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import Protocol

import aiosmtplib

from gateway.config.sections import RelaySection
from gateway.core.keyfiles import load as load_key_file
from gateway.core.outcomes import PermanentFailure, TemporaryFailure


class Transport(Protocol):
    async def send(self, mail_from: str, to: str, message: bytes) -> str | None:
        """Deliver or raise TemporaryFailure / PermanentFailure; returns the provider's id for the
        message where it gives one (an SMS's SID), for status callbacks to find it by."""
        ...


def _mailbox_name(address: str) -> str:
    return re.sub(r"[^a-z0-9@._+-]", "_", address.strip().lower())


class MaildirTransport:
    def __init__(self, root: Path) -> None:
        self._root = root
        # Mailboxes this process has made (or found) whole: three mkdir calls a message were a
        # good part of a send.
        self._made: set[Path] = set()

    def mailbox(self, address: str) -> Path:
        return self._root / _mailbox_name(address)

    async def send(self, mail_from: str, to: str, message: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, to, message)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to the maildir ({type(exc).__name__})") from exc

    def _write(self, to: str, message: bytes) -> None:
        box = self.mailbox(to)
        if box not in self._made:
            self._make(box)
        try:
            self._deliver(box, message)
        except FileNotFoundError:
            # Removed since we made it (a spool cleared by hand): made again, as before the cache.
            self._made.discard(box)
            self._make(box)
            self._deliver(box, message)

    def _make(self, box: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._made.add(box)

    @staticmethod
    def _deliver(box: Path, message: bytes) -> None:
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.{socket.gethostname().replace('/', '_')}"
        tmp = box / "tmp" / name
        with open(tmp, "xb") as handle:
            handle.write(message)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, box / "new" / name)
        fd = os.open(box / "new", os.O_RDONLY)
        try:
            os.fsync(fd)  # make the rename itself durable
        finally:
            os.close(fd)


class SmtpRelayTransport:
    def __init__(self, relay: RelaySection, keys_home: Path) -> None:
        self._relay = relay
        self._password: str | None = None
        if relay.password_file is not None:
            path = relay.password_file if relay.password_file.is_absolute() else keys_home / relay.password_file
            self._password = load_key_file(path).decode().strip()
        self._tls: ssl.SSLContext | None = None
        if relay.starttls:
            self._tls = ssl.create_default_context(cafile=str(relay.ca_file) if relay.ca_file else None)

    async def send(self, mail_from: str, to: str, message: bytes) -> None:
        relay = self._relay
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            start_tls=relay.starttls,
            use_tls=False,
            tls_context=self._tls,
            username=relay.username,
            password=self._password,
            timeout=relay.timeout.total_seconds(),
        )
        try:
            await client.connect()
            try:
                await client.sendmail(mail_from, [to], message)
            except BaseException:
                # Not aiosmtplib.send's `async with`: on the way out of anything but a lost
                # connection it sends QUIT and waits up to the full timeout for the 221, so a send
                # cancelled at the outbox's bound (half the lease) would go on for another timeout.
                client.close()
                raise
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):  # sent: a failed QUIT changes nothing
                await client.quit()
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            if all(code >= 500 for code in codes):
                raise PermanentFailure(f"relay refused the recipient ({'/'.join(map(str, codes))})") from exc
            raise TemporaryFailure(f"relay deferred the recipient ({'/'.join(map(str, codes))})") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                raise PermanentFailure(f"relay refused the message ({exc.code})") from exc
            raise TemporaryFailure(f"relay deferred the message ({exc.code})") from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            raise TemporaryFailure(f"relay unreachable ({type(exc).__name__})") from exc
        except aiosmtplib.SMTPException as exc:
            if relay.starttls and "STARTTLS" in str(exc):
                # Never fall back to plaintext: the relay is misconfigured or someone is in between.
                raise TemporaryFailure("relay does not offer STARTTLS, which is required") from exc
            raise TemporaryFailure(f"relay unavailable ({type(exc).__name__})") from exc
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise TemporaryFailure(f"relay unreachable ({type(exc).__name__})") from exc
