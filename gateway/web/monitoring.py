"""/metrics (Prometheus' text format), /livez and /readyz (JSON).

/metrics is served where [metrics] says: on its own listener (no token: keep that address on
loopback or a monitoring network), and/or on the main HTTP port behind a bearer token read from
a file, compared in constant time; 401 without it. With neither configured it is not served.
/livez answers 200 whenever the process and its loop answer; /readyz 200 or 503 with each check.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Config, Settings
from gateway.core.clock import Clock
from gateway.core.keyfiles import KeyFileError
from gateway.core.keyfiles import load as load_key_file
from gateway.core.metrics import Counters, Heartbeats
from gateway.report import health
from gateway.report import metrics as db_metrics


def metrics_token(config: Config) -> bytes | None:
    """The bearer token /metrics wants on the main HTTP port, if [metrics] token_file is set: read
    before anything opens, so that a missing or world-readable file stops the start."""
    path = config.settings.metrics.token_file
    if path is None:
        return None
    token = load_key_file(path if path.is_absolute() else config.keys_dir / path).strip()
    if len(token) < 16:
        raise KeyFileError(f"{path}: the metrics token is shorter than 16 characters; write a long random one")
    return token


def where(settings: Settings) -> str:
    """Where /metrics is served, in words for check-config."""
    m = settings.metrics
    if not m.enabled:
        return 'metrics: /metrics is off; to serve it set [metrics] listen = "127.0.0.1:9464" or token_file'
    places = [f"on its own listener {m.listen} (no token: keep it on loopback)"] if m.listen else []
    if m.token_file:
        shown = m.token_file if m.token_file.is_absolute() else f"keys/{m.token_file}"
        places.append(f"on the HTTP port behind the bearer token in {shown}")
    return "metrics: /metrics " + " and ".join(places)


class Monitoring:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        counters: Counters,
        heartbeats: Heartbeats,
        clock: Clock,
        token: bytes | None,
    ) -> None:
        self._s = settings
        self._engine = engine
        self._counters = counters
        self._heartbeats = heartbeats
        self._clock = clock
        self._token = token

    def routes(self, app: web.Application) -> None:
        """On the main HTTP app: the probes always; /metrics only behind its token."""
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        if self._token is not None:
            app.router.add_get("/metrics", self.guarded_metrics)

    def listener_app(self) -> web.Application:
        """The separate metrics listener: /metrics without a token, and the probes."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        now = self._clock.now()
        ages = self._heartbeats.ages(now)
        # Readiness first: with the database gone, the scrape still answers (this process's
        # counters and gateway_ready 0), so an alert says why rather than only "scrape failed".
        readiness = await health.check(self._engine, self._s.health, self._heartbeats, now)
        found = db_metrics.readiness(readiness.ready, {name: c["ok"] for name, c in readiness.checks.items()})
        if readiness.checks["database"]["ok"]:
            snap = await db_metrics.read(self._engine, now)
            found += db_metrics.families(snap, self._s, now, ages)
        scrape = CollectorRegistry(auto_describe=True)
        scrape.register(db_metrics.Fixed(found))
        body = generate_latest(scrape) + generate_latest(self._counters.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def guarded_metrics(self, request: web.Request) -> web.Response:
        assert self._token is not None
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        # compare_digest: the time taken says nothing about how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
            return web.json_response(
                {"error": "send the metrics token from [metrics] token_file as 'Authorization: Bearer TOKEN'"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return await self.metrics(request)

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        now = self._clock.now()
        result = await health.check(self._engine, self._s.health, self._heartbeats, now)
        return web.json_response(result.as_json(), status=200 if result.ready else 503)
