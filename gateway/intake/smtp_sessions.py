"""SMTP sessions with bounds: how many at once (in total and per client address), and how long one
may sit idle before DATA.

Without bounds, 5,000 idle connections were all held until the process ran out of file descriptors,
and then neither SMTP nor HTTP answered. Here a connection over a cap is answered 421 (a temporary
failure: a sending server queues the message and retries) and closed at once, by a small protocol
that never builds an SMTP session, so a flood of refused connections costs almost nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, syntax

from gateway.core.logs import RateLimitedLog
from gateway.core.metrics import Counters

log = logging.getLogger(__name__)


def client_key(peer: object) -> str:
    """The address a per-client cap counts under. An IPv6 client gets a whole /64 (one host is
    routinely given one, so counting single addresses would give it billions of slots)."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class SessionLimits:
    """Counts open sessions in total and per client key; one instance per listener."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open: Counter[str] = Counter()
        self._count = 0

    @property
    def open(self) -> int:
        return self._count

    def admit(self, key: str | None) -> str | None:
        """Take a slot for `key` (None: in the total only, client not known yet); or, when a cap is
        reached, say which (and take nothing)."""
        if self._count >= self.total:
            return "total"
        if key is not None and self._open[key] >= self.per_client:
            return "per client address"
        self._count += 1
        if key is not None:
            self._open[key] += 1
        return None

    def name(self, key: str) -> bool:
        """Count a session admitted with no key under `key` as well; False (nothing counted) when
        `key` is at its cap."""
        if self._open[key] >= self.per_client:
            return False
        self._open[key] += 1
        return True

    def release(self, key: str | None) -> None:
        self._count -= 1
        if key is None:
            return
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]


class Slot:
    """One admitted session's place in the limits, given back once when the connection ends.
    Behind a balancer (smtp.proxy_protocol) the connection's own address is the balancer's, so the
    session is counted in the total only until its PROXY header names the client (`claim`)."""

    def __init__(self, limits: SessionLimits, key: str | None) -> None:
        self._limits = limits
        self._key = key
        self._held = True

    def claim(self, key: str) -> bool:
        if self._key is not None or not self._held:
            return True  # already counted under its connection's address
        if not self._limits.name(key):
            return False
        self._key = key
        return True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits.release(self._key)


class BoundedSMTP(SMTP):
    """aiosmtpd's SMTP with two timeouts and a slot to give back.

    aiosmtpd has one `timeout`, restarted at every command and used for the whole of DATA. It is
    given the short idle timeout here, and DATA alone gets the long one: a 25 MB message over a
    slow link may take minutes, but an idle connection before DATA is only holding a slot.
    """

    def __init__(self, *args: Any, data_timeout: float, slot: Slot, counters: Counters, **kwargs: Any) -> None:
        # Any: passed on unchanged to aiosmtpd's SMTP, whose signature types them
        super().__init__(*args, **kwargs)
        self._data_timeout = data_timeout
        self.slot = slot
        self._counters = counters

    async def push(self, status: AnyStr) -> None:
        # Every reply aiosmtpd sends goes through here (greeting, each command's answer, our
        # handler's 250 or 451): counted by its code for /metrics.
        self._counters.smtp_reply(status)
        await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self._reset_timeout(self._data_timeout)
        try:
            await super().smtp_DATA(arg)
        finally:
            # Back to the idle timeout for the next command (aiosmtpd restarts the timer only
            # when a command arrives, so without this the long one would run on).
            if self.transport is not None:
                self._reset_timeout()

    def connection_lost(self, error: Exception | None) -> None:
        # Once only (Slot.release): after STARTTLS aiosmtpd sees a second transport, but one connection.
        self.slot.release()
        super().connection_lost(error)


class Gate(asyncio.Protocol):
    """The first protocol of every connection: admits it to an SMTP session, or refuses it.

    The peer address is known only in connection_made, so the decision is made there: an admitted
    connection is handed to a new BoundedSMTP (`set_protocol`, as aiosmtpd itself does for
    STARTTLS, before any data is read); a refused one gets the 421 and is closed. With `proxied`
    (smtp.proxy_protocol) the peer is the balancer: only the total is decided here, the per-client
    cap at the PROXY header (gateway.intake.smtp, handle_PROXY).
    """

    def __init__(
        self,
        limits: SessionLimits,
        make_smtp: Callable[[Slot], BoundedSMTP],
        hostname: str,
        refusals: RateLimitedLog,
        counters: Counters,
        proxied: bool = False,
    ) -> None:
        self._proxied = proxied  # the peer is the balancer: the client is counted at its PROXY header
        self._counters = counters
        self._limits = limits
        self._make_smtp = make_smtp
        self._hostname = hostname
        self._refusals = refusals

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        key = None if self._proxied else client_key(transport.get_extra_info("peername"))
        cap = self._limits.admit(key)
        if cap is not None:
            transport.write(f"421 4.7.0 {self._hostname} Too many connections, try again later\r\n".encode())
            transport.close()  # after the write is flushed
            self._counters.smtp_reply("421")
            # No address in the log (it identifies a sender); a flood is one line per interval.
            self._refusals.event(
                f"smtp: refused a connection over the {cap} cap ({self._limits.open} sessions open)", kind=cap
            )
            return
        smtp = self._make_smtp(Slot(self._limits, key))
        transport.set_protocol(smtp)
        smtp.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        pass  # a refused connection: whatever it sends is not read

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # only refused connections end here; they hold nothing
