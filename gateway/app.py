"""Wiring: build every stage from the one config object and run the servers and worker loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config
from gateway.core import db, keyfiles
from gateway.core.clock import Clock, SystemClock
from gateway.core.logs import RateLimitedLog, install_redaction, loop_exception_handler
from gateway.core.metrics import Counters, Heartbeats
from gateway.core.reseal import Resealer
from gateway.core.schema import messages
from gateway.core.sealed import Sealed
from gateway.core.sealing import KEY_FILE as SEALING_KEY
from gateway.core.sealing import Sealer
from gateway.deliver.sms_status import SmsReconciler
from gateway.deliver.transports import MaildirTransport, SmtpRelayTransport, Transport
from gateway.deliver.twilio import TwilioTransport, auth_token
from gateway.deliver.worker import Outbox
from gateway.history import index as child_index
from gateway.history.keys import KEY_FILE as HISTORY_KEY
from gateway.history.keys import Hasher, load_key
from gateway.intake.form_tokens import KEY_FILE as FORM_KEY
from gateway.intake.sms_webhooks import SmsWebhooks
from gateway.intake.smtp import start_smtp, tls_context
from gateway.intake.store import IntakeWriter
from gateway.intake.web_form import ReferralForm
from gateway.open.identity import load_identity
from gateway.open.opener import Opener
from gateway.outbox import token_keys
from gateway.outbox.alerting import Alerter
from gateway.outbox.compose import Composer, email_environment
from gateway.outbox.dispatch import Dispatcher
from gateway.outbox.protect import Protector
from gateway.outbox.tokens import AckSigner
from gateway.pipeline import repeats
from gateway.pipeline.channels import Pipelines
from gateway.pipeline.concern import ConcernWriter
from gateway.pipeline.driver import Processor
from gateway.pipeline.write import BatchWriter
from gateway.report import retention
from gateway.report.digest import DigestMaker
from gateway.staff.factors import Factors
from gateway.staff.sessions import Sessions
from gateway.staff.throttle import KEY_FILE as THROTTLE_KEY
from gateway.staff.throttle import AddressThrottle
from gateway.staff.users import Users
from gateway.track.acks import Tracker
from gateway.track.answers import Answers
from gateway.track.deadlines import Deadlines
from gateway.track.referrer import Referrers
from gateway.web.account_pages import AccountPages
from gateway.web.ack_pages import AckPages, make_app, web_environment
from gateway.web.admin_pages import AdminPages
from gateway.web.answer_pages import AnswerPages
from gateway.web.dashboard import DashboardPages
from gateway.web.forwarded import setup_forwarded
from gateway.web.monitoring import Monitoring, metrics_token
from gateway.web.report_page import ReportPage
from gateway.web.session import SESSION_KEY_FILE, WebSessions, setup_sessions
from gateway.web.sign_in_pages import SignInPages
from gateway.workers import Loops

log = logging.getLogger(__name__)

# The secret keys under keys/ every instance must hold the same (sealed data, links, cookies and
# address hashes made by one are read by another): on PostgreSQL start never makes them.
SHARED_KEYS = (SEALING_KEY, token_keys.KEY_FILE, FORM_KEY, SESSION_KEY_FILE, THROTTLE_KEY, HISTORY_KEY)


def make_transport(config: Config) -> Transport:
    relay = config.settings.mail.relay
    if relay is None:
        return MaildirTransport(config.maildir)
    return SmtpRelayTransport(relay, config.keys_dir)


async def _hsts(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"


class Gateway:
    """One instance: SMTP and HTTP listeners plus the processing, outbox and deadline loops.

    With workers=False only the listeners run and tests drive the stages themselves
    (process_all / deliver_all / fire_deadlines), which keeps them deterministic.
    """

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        transport: Transport | None = None,
        workers: bool = True,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._transport = transport
        self._workers = workers
        # Identifies this process's leases; a restarted process is a new owner, and the old
        # one's leases simply run out.
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # < 64 chars
        self._wake_processor = asyncio.Event()
        self._wake_outbox = asyncio.Event()
        self._wake_deadlines = asyncio.Event()
        self._smtp: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self._metrics_http: web.AppRunner | None = None
        # What /metrics counts and /readyz checks: this gateway's own, never a process global.
        self.counters = Counters()
        self.heartbeats = Heartbeats()
        self.loops = Loops(self.clock, self.heartbeats, self._quiet)
        # aiosmtpd logs every envelope address at INFO: personal data has no place in our logs.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        # And whatever is still logged by aiohttp, aiosmtpd and asyncio, at any level, carries no
        # request text (gateway.core.logs says what is kept).
        install_redaction()
        self._loop_errors = RateLimitedLog(logging.getLogger("gateway.loop"), logging.ERROR)
        self._previous_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    async def start(self) -> None:
        cfg = self.config
        self._metrics_token = metrics_token(cfg)  # first: a bad token file stops the start with nothing open
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(loop_exception_handler(self._loop_errors))
        # Before anything is opened: with Twilio configured and no auth token the gateway refuses
        # to start (webhooks could not be checked, alerts could not be sent), leaving nothing open.
        token = auth_token(cfg) if cfg.settings.sms.provider == "twilio" else ""
        self.engine: AsyncEngine = db.make_engine(cfg.database_url, cfg.settings.database.busy_timeout)
        await db.upgrade(self.engine)
        self.db = db.Database(self.engine, cfg.settings.processing.max_defer, cfg.settings.database.busy_timeout)
        async with self.engine.connect() as conn:
            has_data = (await conn.execute(select(messages.c.id).limit(1))).first() is not None
        # On PostgreSQL several instances may start together, each with its own keys/: never make
        # the keys here, or each would make different ones. `keys init` makes them once.
        shared = self.engine.dialect.name == "postgresql"
        if shared:
            keyfiles.require_made(cfg.keys_dir, SHARED_KEYS)
        may_create = not has_data and not shared
        self.sealer = Sealer.from_keys_dir(cfg.keys_dir, may_create=may_create)
        self.sealed = Sealed(self.sealer)
        rotation = cfg.settings.rotation
        # Settled once two key checks have passed since a change: every instance has looked by then.
        settle = 2 * rotation.key_check.total_seconds()
        self.resealer = Resealer(
            self.db, self.sealer, rotation.reseal_batch, rotation.reseal_pause.total_seconds(), settle
        )
        self.signer = AckSigner.from_keys_dir(cfg.keys_dir, may_create=may_create)
        self.hasher = Hasher(load_key(cfg.keys_dir))
        if not await child_index.mark_if_empty(self.db, self.hasher, self.clock.now()):
            # Earlier referrals are still found (by opening older referrals, as before the index), but
            # slowly: the index is built by the command, not here (it opens every stored referral).
            log.warning(
                "history: the child index is not built for the current index key; run `referral-gateway reindex`"
            )
        self.transport = self._transport or make_transport(cfg)
        self.identity = load_identity(cfg, self.clock.now(), self.clock.now, self.counters.openpgp_fallback)
        self._build_stages(token)
        self.writer.start()
        smtp = cfg.settings.smtp
        tls = (
            tls_context(cfg.keys_dir / smtp.tls_cert, cfg.keys_dir / smtp.tls_key)
            if smtp.tls_cert and smtp.tls_key
            else None
        )
        self._smtp = await start_smtp(smtp, self.writer, self.counters, tls)
        app = self.web_app(Users(self.db), token)
        self._http = web.AppRunner(app, access_log=None)  # access logs would record ack tokens
        await self._http.setup()
        site = web.TCPSite(self._http, cfg.settings.http.host, cfg.settings.http.port)
        await site.start()
        if cfg.settings.metrics.listen is not None:
            self._metrics_http = web.AppRunner(self.monitoring.listener_app(), access_log=None)
            await self._metrics_http.setup()
            m = cfg.settings.metrics
            await web.TCPSite(self._metrics_http, m.listen_host, m.listen_port).start()
        if self._workers:
            s = cfg.settings
            run = self.loops.run
            self.loops.start(
                run("processing", self._process_step, self._wake_processor, s.processing.retry.total_seconds())
            )
            self.loops.start(run("outbox", self.outbox.run_once, self._wake_outbox, s.outbox.poll.total_seconds()))
            self.loops.start(self._deadline_loop())
            # Re-seals blobs under retired keys; idle, it checks every key_check for a rotated key.
            self.loops.start(
                run("reseal", self.resealer.run_once, asyncio.Event(), s.rotation.key_check.total_seconds())
            )
            if s.retention.enabled:  # one batch a step; a busy step runs again at once
                self.loops.start(run("retention", self._purge_step, asyncio.Event(), s.retention.every.total_seconds()))
            if self.reconciler is not None:
                self.loops.start(run("sms-status", self.reconciler.run_once, asyncio.Event(), 60.0))
        log.info(
            "gateway started: smtp %s:%d, http %s:%d, %s",
            cfg.settings.smtp.host,
            self.smtp_port,
            cfg.settings.http.host,
            self.http_port,
            "relay " + cfg.settings.mail.relay.host if cfg.settings.mail.relay else "maildir delivery",
        )

    def _build_stages(self, token: str) -> None:
        """Every stage once, each given what it needs (one Dispatcher for the pipeline's first
        escalation step and for the later ones the deadline loop fires)."""
        cfg, s, sealed = self.config, self.config.settings, self.sealed
        composer = Composer(cfg, self.signer, email_environment(cfg.templates_dir))
        protector = Protector(cfg, self.identity)
        dispatcher = Dispatcher(s, Alerter(composer, protector))
        self.writer = IntakeWriter(
            self.db, sealed, self.clock, self._wake_processor.set, s.smtp.commit_window.total_seconds()
        )
        opener = Opener(s, self.identity)
        content_key = repeats.content_key(cfg.keys_dir)
        pipelines = Pipelines(s, sealed, opener, dispatcher, composer, protector, self.db, content_key, self.hasher)
        concerns = ConcernWriter(s, self.hasher, composer)
        batch_writer = BatchWriter(s, self.db, sealed, composer, self.owner, concerns)
        self.processor = Processor(s, self.db, pipelines, batch_writer, self.clock, self.owner)
        self.sms_transport: TwilioTransport | None = None
        if s.sms.provider == "twilio":
            self.sms_transport = TwilioTransport(s.sms, token, f"{s.http.public_url}/sms/status")
        self.outbox = Outbox(cfg, self.db, sealed, self.transport, self.clock, self.owner, self.sms_transport)
        referrers = Referrers(sealed, composer, protector)
        self.tracker = Tracker(cfg, self.db, sealed, composer, self.clock, referrers)
        self.answers = Answers(cfg, self.db, sealed, composer, protector, dispatcher, referrers, self.clock)
        self.deadlines = Deadlines(s, self.db, sealed, self.clock, dispatcher, self.counters, referrers)
        self.reconciler = SmsReconciler(s, self.db, self.sms_transport, self.clock) if self.sms_transport else None
        self.digest = DigestMaker(cfg, self.db, sealed, composer, protector, self.identity, self.clock, self.owner)

    def web_app(self, accounts: Users, sms_token: str = "", factors: Factors | None = None) -> web.Application:
        """Every page and webhook on one aiohttp app, in the order their response hooks need.
        `accounts` (and `factors`) are given so that tests can sign staff in with cheap hashing."""
        cfg = self.config
        pages = AckPages(
            self.signer,
            self.tracker,
            self.clock,
            web_environment(cfg.templates_dir),
            cfg.settings.gateway.council,
            cfg.settings.gateway.duty_phone,
        )
        app = make_app(pages)
        setup_forwarded(app, cfg.settings.http.trusted_proxies)
        # After make_app: the form's response hook (a CSP with a nonce for its one module script)
        # must run after the site-wide headers.
        ReferralForm.from_config(cfg, self.writer, self.clock).routes(app)
        # After the form: the dashboard reuses its /assets route. Sessions are set up once for
        # every staff page.
        setup_sessions(app, cfg.keys_dir, cfg.settings.http.public_url)
        sessions = WebSessions(accounts, Sessions(self.db), self.clock)
        factors = factors or Factors(self.db, self.sealer)
        throttle = AddressThrottle.from_keys_dir(self.db, cfg.keys_dir)
        SignInPages(cfg, self.db, accounts, factors, throttle, sessions, self.clock).routes(app)
        AccountPages(cfg, self.db, accounts, factors, sessions, self.clock).routes(app)
        dashboard = DashboardPages(
            cfg, self.db, self.sealed, self.signer, self.tracker, self.identity, accounts, sessions, self.clock
        )
        dashboard.routes(app)
        AnswerPages(dashboard, self.answers).routes(app)  # structured answers (issue 15)
        ReportPage(cfg, self.db, self.sealer, sessions, self.clock).routes(app)
        AdminPages(cfg, self.db, accounts, factors, sessions, self.clock).routes(app)
        if self.sms_transport is not None:
            SmsWebhooks(
                cfg, sms_token, self.db, self.sealed, self.signer, self.writer, self.tracker, self.clock, self.counters
            ).routes(app)
        self.monitoring = Monitoring(
            cfg.settings, self.engine, self.counters, self.heartbeats, self.clock, self._metrics_token
        )
        self.monitoring.routes(app)
        app.on_response_prepare.append(self._after_request)
        if cfg.settings.http.public_url.startswith("https://"):
            # Served over TLS (here or at a proxy): browsers must never fall back to plain HTTP.
            app.on_response_prepare.append(_hsts)
        return app

    async def _after_request(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "POST":  # an acknowledgement queues a notice: send it now
            self._wake_outbox.set()

    @property
    def smtp_port(self) -> int:
        assert self._smtp is not None
        return int(self._smtp.sockets[0].getsockname()[1])

    @property
    def metrics_port(self) -> int:
        assert self._metrics_http is not None
        return int(self._metrics_http.addresses[0][1])

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return int(self._http.addresses[0][1])

    async def stop(self) -> None:
        if self._smtp:
            self._smtp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._smtp.wait_closed(), 5)
        await self.loops.stop()
        if not hasattr(self, "writer"):  # start() failed before anything below was made
            if hasattr(self, "engine"):
                await self.engine.dispose()
            asyncio.get_running_loop().set_exception_handler(self._previous_handler)
            self._loop_errors.close()
            return
        await self.writer.stop()
        if self._http:
            await self._http.cleanup()
        if self._metrics_http:
            await self._metrics_http.cleanup()
        await self.engine.dispose()
        self.identity.close()
        asyncio.get_running_loop().set_exception_handler(self._previous_handler)
        self._loop_errors.close()

    async def _quiet(self) -> None:
        # Waits out a burst of intake before a worker step, so a 250 is not kept waiting.
        await self.writer.quiet(self.config.settings.processing.max_defer.total_seconds())

    async def _process_step(self) -> int:
        count = await self.processor.run_once()
        if count:
            self._wake_outbox.set()
            self._wake_deadlines.set()
        return count

    async def _digest_step(self) -> int:
        if await self.digest.run_once():
            self._wake_outbox.set()
        return 0  # nothing more to do until the next poll, made or not

    async def _deadline_loop(self) -> None:
        self.heartbeats.expect("deadlines", self.clock.now(), 30.0)
        while not self.loops.stopping.is_set():
            self._wake_deadlines.clear()
            wait = 30.0
            try:
                if await self.deadlines.fire_due():
                    self._wake_outbox.set()
                due = await self.deadlines.next_due()
                if due is not None:
                    wait = min(wait, max((due - self.clock.now()).total_seconds(), 0.0) + 0.05)
                self.heartbeats.beat("deadlines", self.clock.now())
            except Exception as exc:  # noqa: BLE001 - as in _loop: the loop must outlive a step
                log.error("deadline loop: step failed (%s)", type(exc).__name__)
            # The daily digest is driven by the clock too: a clock comparison each wake (at most
            # every 30 s), one query a day once due. Its own try: a digest that fails must not stop
            # deadlines firing, nor they it.
            try:
                await self._digest_step()
            except Exception as exc:  # noqa: BLE001
                log.error("deadline loop: digest step failed (%s)", type(exc).__name__)
            await self.loops.rest(self._wake_deadlines, wait)

    # Drain helpers: run a stage until it has nothing ready (tests, and `serve --once` later).
    async def process_all(self) -> int:
        total = 0
        while count := await self.processor.run_once():
            total += count
        return total

    async def deliver_all(self) -> int:
        total = 0
        while count := await self.outbox.run_once():
            total += count
        return total

    async def reseal_all(self) -> int:
        """Re-seals until a whole pass finds nothing to do; returns how many blobs it re-sealed."""
        before = self.resealer.resealed
        while await self.resealer.run_once():
            pass
        return self.resealer.resealed - before

    async def fire_deadlines(self) -> int:
        return await self.deadlines.fire_due()

    async def make_digest(self) -> int:
        """Today's digest if it is due and not yet made: the deliveries queued (0: none)."""
        return await self.digest.run_once()

    async def _purge_step(self) -> int:
        return len(await retention.purge_batch(self.db, self.config.settings, self.clock.now(), "gateway"))

    async def purge_all(self) -> int:
        """What the retention loop does, until nothing is due (tests drive it with the clock)."""
        return len(await retention.purge(self.db, self.config.settings, self.clock.now(), "gateway"))

    async def reconcile_sms(self) -> int:
        return await self.reconciler.run_once() if self.reconciler else 0
