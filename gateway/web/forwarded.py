"""The client's address behind trusted reverse proxies (`[http] trusted_proxies`): what the public
form's flood guard, the staff sign-in throttle and the stored web envelope count as "one client".

Decisions, each for a reason:
- Only X-Forwarded-For, not RFC 7239 `Forwarded:` (aiohttp parses that one as `request.forwarded`).
  A proxy appends to one of the two; the other comes from the client untouched. Reading both would
  let a client choose its address in the header its proxy does not write, and choosing the right
  one would take a second setting. Every common proxy and balancer writes X-Forwarded-For.
- The address is put beside the request (`client_address`), not into it with aiohttp's
  `request.clone(remote=...)`: a clone has its own copy of the request's state, and aiohttp runs
  the response hooks with the original request, so a page's CSP nonce set on the clone would be
  lost. aiohttp-remotes (built on clone) has that problem too, and its strict mode wants an exact
  count of hops (a client's own X-Forwarded-For gets a 400) and takes the scheme and Host from the
  headers as well; its loose mode believes anyone.
- Nothing here logs an address, nor refuses a request: a header we cannot read leaves the client
  as the nearest proxy that is trusted, which only ever makes clients share an allowance.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

CLIENT: web.RequestKey[str] = web.RequestKey("client_address", str)


def _address(text: str) -> Address | None:
    """An address as a proxy writes it: bare, or (some proxies) with a port, IPv6 in brackets."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        found = ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: the same client either way.
    if isinstance(found, IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def resolve(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's unless the peer is a trusted proxy, then X-Forwarded-For's
    rightmost address that is not itself a trusted proxy.

    Walked from the right because each proxy appends the address it was connected from: the
    rightmost entries were written by our own proxies, anything to the left of the first stranger
    came from the client and may be invented ("XFF: anything, real" counts as real). Taking the
    leftmost, as many guides do, would let every request choose its own allowance."""
    if peer is None:
        return "unknown"
    hop = _address(peer)
    if hop is None or not any(hop in network for network in trusted):
        return peer
    entries = [entry for line in forwarded_for for entry in line.split(",") if entry.strip()]
    for entry in reversed(entries):
        found = _address(entry)
        if found is None:  # unreadable: the proxy that wrote it is the nearest client we know
            return str(hop)
        if not any(found in network for network in trusted):
            return str(found)
        hop = found
    return str(hop)  # every hop is one of ours (a health check from inside): the furthest of them


def forwarded_middleware(trusted: Sequence[Network]) -> Middleware:
    """Records each request's client address for `client_address`; first of the app's middlewares."""
    networks = tuple(trusted)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        forwarded_for = request.headers.getall(hdrs.X_FORWARDED_FOR, []) if networks else []
        request[CLIENT] = resolve(request.remote, forwarded_for, networks)
        return await handler(request)

    return middleware


def setup_forwarded(app: web.Application, trusted: Sequence[Network]) -> None:
    # First, so that every other middleware and handler sees the address.
    app.middlewares.insert(0, forwarded_middleware(trusted))


def client_address(request: web.Request) -> str:
    """The client's address (see the module's docstring); the peer's on an app without the middleware."""
    return request.get(CLIENT) or request.remote or "unknown"
