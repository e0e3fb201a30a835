"""Staff sessions for the web dashboard: an encrypted cookie, expiry enforced here, CSRF tokens.

The session is a cookie encrypted and authenticated with Fernet (aiohttp-session's
EncryptedCookieStorage) under keys/session.key, made with mode 0600 on first run. Losing the key
only signs everyone out, so it is always created when missing. The cookie is HttpOnly,
SameSite=Strict, Secure unless the public URL is plain http on loopback (development), and has no
Max-Age: it ends when the browser closes. It holds the user's id, their session epoch, the times
of sign-in and of the last request, and the CSRF token; nothing personal.

A cookie cannot be revoked, so every request is checked here against the clock and the database
(`WebSessions.current_user`): IDLE_TIMEOUT since the last request, ABSOLUTE_TIMEOUT since sign-in,
the account still enabled, and its session epoch unchanged. Signing out, disabling the account and
resetting its password all bump the epoch, which ends every session of that user, including a
copied cookie.

Handlers that change anything take a POST with the CSRF token from `csrf_token()` in the field
CSRF_FIELD and call `require_csrf(request, form)` first; SameSite=Strict already stops most
cross-site posts, the token covers older browsers and same-site subdomains. Sign-in forms need it
too (login CSRF): an anonymous visitor gets a session holding only a token.

We install our own small middleware rather than aiohttp_session.setup: the library's keeps its
state under string request keys, which aiohttp 3.14 warns about on every new key (an error under
the tests' filterwarnings = error).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from yarl import URL

from gateway.core import keyfiles
from gateway.core.clock import Clock
from gateway.staff.users import User, Users

log = logging.getLogger(__name__)

SESSION_KEY_FILE = "session.key"
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
CSRF_FIELD = "csrf_token"
SECURE_COOKIE_NAME = "__Host-rg-session"  # __Host-: the browser takes it only with Secure, Path=/, no Domain
LOCAL_COOKIE_NAME = "rg-session"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

_CSRF_REFUSED = (
    "This form has expired or did not come from this site. Go back, reload the page and send the form again."
)


class SessionStorage(EncryptedCookieStorage):
    """EncryptedCookieStorage that deletes its cookie with the flags it set it with: a browser
    ignores the deletion of a __Host- (Secure) cookie sent without Secure."""

    def save_cookie(self, response: web.StreamResponse, cookie_data: str, *, max_age: int | None = None) -> None:
        if cookie_data:
            super().save_cookie(response, cookie_data, max_age=max_age)
            return
        params = self.cookie_params
        response.del_cookie(
            self.cookie_name,
            path=params.get("path", "/"),
            secure=params.get("secure"),
            httponly=params.get("httponly"),
            samesite=params.get("samesite"),
        )


_STORAGE = web.RequestKey("gateway_session_storage", SessionStorage)
_SESSION = web.RequestKey("gateway_session", Session)
_USER = web.RequestKey("gateway_session_user", User)


def cookie_secure(public_url: str) -> bool:
    """Secure, unless the gateway is reached over plain http on this machine (development)."""
    url = URL(public_url)
    return not (url.scheme == "http" and url.host in _LOOPBACK)


def session_storage(key: bytes, secure: bool) -> SessionStorage:
    return SessionStorage(
        key,
        cookie_name=SECURE_COOKIE_NAME if secure else LOCAL_COOKIE_NAME,
        secure=secure,
        httponly=True,
        samesite="Strict",
        max_age=None,  # a browser-session cookie; the time limits are enforced by WebSessions
    )


def session_middleware(storage: SessionStorage) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_STORAGE] = storage
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # a redirect or refusal may carry a changed session too
            await _save(request, exc)
            raise
        await _save(request, response)
        return response

    return middleware


async def _save(request: web.Request, response: web.StreamResponse) -> None:
    if _SESSION not in request or not isinstance(response, web.Response):
        return  # no session used, or a stream whose headers have gone already
    session = request[_SESSION]
    # _changed is set by the Session on every write; aiohttp-session's own middleware reads it too.
    if session._changed:
        await request[_STORAGE].save_session(request, response, session)


def setup_sessions(app: web.Application, keys_dir: Path, public_url: str) -> None:
    """Install the session middleware on `app`, with the key from keys/session.key."""
    key = keyfiles.load_or_create(keys_dir / SESSION_KEY_FILE)
    app.middlewares.append(session_middleware(session_storage(key, cookie_secure(public_url))))


def _storage(request: web.Request) -> SessionStorage:
    if _STORAGE not in request:
        raise RuntimeError("no session middleware on this app: call setup_sessions(app, ...)")
    return request[_STORAGE]


async def get_session(request: web.Request) -> Session:
    if _SESSION not in request:
        # A cookie that does not decrypt (old key, tampered, foreign) gives a new, empty session.
        request[_SESSION] = await _storage(request).load_session(request)
    return request[_SESSION]


async def csrf_token(request: web.Request) -> str:
    """The token to put in every form (field CSRF_FIELD); made on first use, kept for the session."""
    session = await get_session(request)
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


async def require_csrf(request: web.Request, form: Mapping[str, object]) -> None:
    """Raise HTTPForbidden unless `form` carries this session's CSRF token."""
    session = await get_session(request)
    expected = session.get("csrf")
    given = form.get(CSRF_FIELD)
    if (
        not isinstance(expected, str)
        or not isinstance(given, str)
        or not hmac.compare_digest(given.encode(), expected.encode())
    ):
        # The route's pattern, not the path: a path may hold a capability token (ack links).
        resource = request.match_info.route.resource
        where = resource.canonical if resource is not None else "?"
        log.info("refused a %s to %s without a valid CSRF token", request.method, where)
        raise web.HTTPForbidden(text=_CSRF_REFUSED)


class WebSessions:
    """Signing in and out, and who is signed in, with the time limits checked on every request."""

    def __init__(
        self,
        users: Users,
        clock: Clock,
        idle: timedelta = IDLE_TIMEOUT,
        absolute: timedelta = ABSOLUTE_TIMEOUT,
    ) -> None:
        self._users = users
        self._clock = clock
        self._idle = idle.total_seconds()
        self._absolute = absolute.total_seconds()

    async def sign_in(self, request: web.Request, user: User) -> None:
        """Start a session for `user` (from Users.authenticate). The session is replaced, not
        reused: nothing from before sign-in survives, and the CSRF token is new."""
        if not user.active:
            raise ValueError("a disabled user cannot be signed in")
        session = await _storage(request).new_session()
        now = self._clock.now().timestamp()
        session["uid"] = user.id
        session["epoch"] = user.session_epoch
        session["signed_in"] = now
        session["seen"] = now
        session["csrf"] = secrets.token_urlsafe(32)
        request[_SESSION] = session
        request[_USER] = user

    async def current_user(self, request: web.Request, activity: bool = True) -> User | None:
        """The signed-in user, or None (and the session is ended) when the session has expired,
        the account was disabled, or the user signed out elsewhere or had their password reset.
        activity=False for requests a page makes by itself (a refresh timer): they do not count
        as use, so they cannot keep an unattended screen signed in."""
        if _USER in request:
            return request[_USER]
        session = await get_session(request)
        if "uid" not in session:
            return None
        now = self._clock.now().timestamp()
        try:
            user_id, epoch = str(session["uid"]), int(session["epoch"])
            signed_in, seen = float(session["signed_in"]), float(session["seen"])
        except (KeyError, TypeError, ValueError):  # not a session this code wrote: treat as signed out
            session.invalidate()
            return None
        if now - signed_in >= self._absolute or now - seen >= self._idle:
            log.info(
                "session of user %s expired (%s)", user_id, "absolute" if now - signed_in >= self._absolute else "idle"
            )
            session.invalidate()
            return None
        user = await self._users.get(user_id)
        if user is None or not user.active or user.session_epoch != epoch:
            session.invalidate()
            return None
        if activity:
            session["seen"] = now
        request[_USER] = user
        return user

    async def sign_out(self, request: web.Request) -> None:
        """End this session and every other session of the same user. Call after require_csrf."""
        user = await self.current_user(request, activity=False)
        session = await get_session(request)
        session.invalidate()
        request.pop(_USER, None)
        if user is not None:  # only a live session may end the others (not a stale, copied cookie)
            await self._users.end_sessions(user.id)
            log.info("user %s signed out", user.id)
