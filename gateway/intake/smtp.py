"""Intake by SMTP: authenticate the transport, store the raw bytes durably, then answer.

Nothing here parses the referral: that runs later from the stored copy, so a bug in a later stage
cannot lose a message that was answered 250. Any internal error answers 451 (the sender's server
keeps the message and retries), never 5xx, and never echoes exception text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import resource
import ssl
from pathlib import Path

from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config.sections import SmtpSection
from gateway.core.logs import RateLimitedLog
from gateway.core.metrics import Counters
from gateway.core.model import Channel
from gateway.core.sealed import EmailEnvelope
from gateway.intake.smtp_sessions import BoundedSMTP, Gate, SessionLimits, Slot, client_key
from gateway.intake.store import Incoming, IntakeWriter

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 Temporary failure storing your message; please try again later"


_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def dedupe_key(mail_from: str, raw: bytes) -> str:
    """Same Message-ID and body from the same sender is the same message (a retry after a lost 250).

    Without a Message-ID the exact bytes stand in for it: a sender's retry resends them unchanged.
    (A regex over the header block, not the email parser: this runs for every message before
    the 250, and only one header is wanted.)
    """
    end = _HEADER_END.search(raw)
    match = _MESSAGE_ID.search(raw, 0, end.start() if end else len(raw))
    message_id = b"".join(match.group(1).split()) if match else b""
    if message_id:
        # The body too: a retry resends it unchanged, but some senders (scanners, clients that
        # make ids from the time in seconds) reuse a Message-ID for a different message.
        # Line endings and trailing blank lines are the transport's, not the sender's.
        body = (raw[end.end() :] if end else b"").replace(b"\r\n", b"\n").rstrip(b"\n")
        return hashlib.sha256(
            b"mid\0" + mail_from.lower().encode() + b"\0" + message_id + b"\0" + hashlib.sha256(body).digest()
        ).hexdigest()
    return hashlib.sha256(b"raw\0" + raw).hexdigest()


class ReferralHandler:
    def __init__(self, settings: SmtpSection, writer: IntakeWriter, refusals: RateLimitedLog) -> None:
        self._addresses = frozenset(a.lower() for a in settings.referral_addresses)
        self._writer = writer
        self._hostname = settings.hostname
        self._refusals = refusals

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() not in self._addresses:
            return f"550 5.1.1 No referral mailbox here by that name; send referrals to {sorted(self._addresses)[0]}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        if session.proxy_data is not None and session.proxy_data.src_addr is not None:
            # The client the balancer's PROXY header names, not the balancer (a v1 "UNKNOWN"
            # header, a balancer's own health check, names none: its peer is kept).
            peer = str(session.proxy_data.src_addr)
        item = Incoming(
            channel=Channel.EMAIL,
            raw=raw,
            envelope=EmailEnvelope(mail_from, tuple(envelope.rcpt_tos), peer, session.host_name or ""),
            dedupe_key=dedupe_key(mail_from, raw),
        )
        try:
            accepted = await self._writer.submit(item)
        except asyncio.CancelledError:
            raise  # the client hung up; the writer still finishes the commit
        except Exception as exc:  # noqa: BLE001
            # The one place intake failures become a reply: 451, so the sender's server retries.
            log.error("smtp intake: commit failed (%s); answered 451", type(exc).__name__)
            return TEMPFAIL
        log.info(
            "smtp intake: accepted referral %s%s",
            accepted.reference,
            " (duplicate of an earlier delivery)" if accepted.duplicate else "",
        )
        return f"250 2.0.0 Accepted: referral {accepted.reference}"

    async def handle_PROXY(self, server: SMTP, session: Session, envelope: Envelope, proxy_data: ProxyData) -> bool:
        # aiosmtpd closes a connection whose valid PROXY header no handler accepts; every valid
        # one is accepted (the listener's firewall decides who may send one), unless the client it
        # names is at its per-client cap. UNKNOWN (a balancer's health check) names no client.
        if proxy_data.src_addr is None or not isinstance(server, BoundedSMTP):
            return True
        if server.slot.claim(client_key(str(proxy_data.src_addr))):
            return True
        await server.push(f"421 4.7.0 {self._hostname} Too many connections, try again later")
        self._refusals.event("smtp: refused a connection over the per client address cap", kind="per client address")
        return False

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error: (Exc) text": permanent (the referral would be given
        # up by the sender's server) and it leaks the text. Always a temporary failure instead.
        log.error("smtp intake: unexpected error %s; answered 451", type(error).__name__)
        return TEMPFAIL


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


# Descriptors the rest of the process needs besides SMTP sessions: HTTP connections, the database,
# gpg and openssl children, log files. Below the cap plus this, the cap cannot protect anything.
FD_HEADROOM = 256


async def start_smtp(
    settings: SmtpSection, writer: IntakeWriter, counters: Counters, tls: ssl.SSLContext | None = None
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    refusals = RateLimitedLog(log)
    handler = ReferralHandler(settings, writer, refusals)
    limits = SessionLimits(settings.max_sessions, settings.max_sessions_per_client)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < settings.max_sessions + FD_HEADROOM:
        log.warning(
            "smtp: the open files limit (%d) is below smtp.max_sessions (%d) + %d for everything else; "
            "raise LimitNOFILE= in the systemd unit (or ulimit -n), or lower smtp.max_sessions",
            soft,
            settings.max_sessions,
            FD_HEADROOM,
        )

    def smtp(slot: Slot) -> BoundedSMTP:
        return BoundedSMTP(
            handler,
            hostname=settings.hostname,  # never socket.getfqdn(): it can block the loop
            data_size_limit=settings.max_message_size,
            timeout=settings.idle_timeout.total_seconds(),
            data_timeout=settings.timeout.total_seconds(),
            slot=slot,
            counters=counters,
            tls_context=tls,
            require_starttls=settings.starttls_required,
            decode_data=False,
            enable_SMTPUTF8=True,
            # The header is awaited as long as a first command would be.
            proxy_protocol_timeout=settings.idle_timeout.total_seconds() if settings.proxy_protocol else None,
            loop=loop,
        )

    def gate() -> Gate:
        return Gate(limits, smtp, settings.hostname, refusals, counters, settings.proxy_protocol)

    return await loop.create_server(gate, host=settings.host, port=settings.port)
