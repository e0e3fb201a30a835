"""Staff sessions for the web dashboard: an encrypted cookie naming a session in the database,
the half-signed-in state between the password and the second factor, and CSRF tokens.

The cookie is encrypted and authenticated with Fernet (aiohttp-session's EncryptedCookieStorage)
under keys/session.key, made with mode 0600 on first run. Losing the key only signs everyone out,
so it is always created when missing. The cookie is HttpOnly, SameSite=Strict, Secure unless the
public URL is plain http on loopback (development), and has no Max-Age: it ends when the browser
closes. It holds the CSRF token and either
- "sid": the token of a signed-in session, a row of gateway.staff.sessions checked on every
  request (`WebSessions.current_user`: not ended, idle and absolute limits, the account enabled,
  its epoch unchanged), so any one session can be ended, a copied cookie with it; or
- "pending": half signed in, after a right password and before the second factor: the user's id
  and epoch, when the password was given, the step reached (code, enrol, codes) and, while
  enrolling, the new TOTP secret (the cookie is encrypted, and the secret is sealed in the
  database only once a code from it proves the app holds it). `current_user` never returns a
  pending session, so every page that asks for a user refuses it; only the sign-in steps read it
  (`WebSessions.pending`), for PENDING_TIMEOUT at most.

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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from yarl import URL

from gateway.core import keyfiles
from gateway.core.clock import Clock
from gateway.staff import events
from gateway.staff.sessions import ABSOLUTE_TIMEOUT as ABSOLUTE_TIMEOUT
from gateway.staff.sessions import IDLE_TIMEOUT as IDLE_TIMEOUT
from gateway.staff.sessions import SessionRecord, Sessions
from gateway.staff.users import User, Users

log = logging.getLogger(__name__)

SESSION_KEY_FILE = "session.key"
PENDING_TIMEOUT = timedelta(minutes=10)  # from the password to the end of the second step
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
_RECORD = web.RequestKey("gateway_session_record", SessionRecord)


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


@dataclass(frozen=True)
class Pending:
    """A half-signed-in session: the password was right; the second factor is still to come.
    stage: "code" (type a code), "enrol" (set up an authenticator with `secret`), "codes" (both
    factors given; the user is to confirm they saved their new recovery codes)."""

    user: User
    stage: str
    secret: str | None
    how: str = ""  # at "codes": how the second factor was given (code, recovery, enrolment)


class WebSessions:
    """Signing in and out, and who is signed in, checked against the database on every request."""

    def __init__(self, users: Users, sessions: Sessions, clock: Clock) -> None:
        self._users = users
        self.records = sessions
        self._clock = clock

    async def _new(self, request: web.Request) -> Session:
        """A fresh session replacing the old: nothing from before survives, the CSRF token is new."""
        session = await _storage(request).new_session()
        session["csrf"] = secrets.token_urlsafe(32)
        request[_SESSION] = session
        request.pop(_USER, None)
        request.pop(_RECORD, None)
        return session

    # -- half signed in --------------------------------------------------------------------------

    async def begin(self, request: web.Request, user: User, stage: str, secret: str | None = None) -> None:
        """After a right password: a new, half-signed-in session (it can see nothing)."""
        if not user.active:
            raise ValueError("a disabled user cannot be signed in")
        session = await self._new(request)
        session["pending"] = {
            "uid": user.id,
            "epoch": user.session_epoch,
            "at": self._clock.now().timestamp(),
            "stage": stage,
            "secret": secret,
        }

    async def pending(self, request: web.Request) -> Pending | None:
        session = await get_session(request)
        data = session.get("pending")
        if not isinstance(data, dict):
            return None
        try:
            user_id, epoch, at, stage = str(data["uid"]), int(data["epoch"]), float(data["at"]), str(data["stage"])
            secret, how = data.get("secret"), str(data.get("how") or "")
        except (KeyError, TypeError, ValueError):  # not a session this code wrote
            session.invalidate()
            return None
        if self._clock.now().timestamp() - at >= PENDING_TIMEOUT.total_seconds():
            log.info("half-signed-in session of user %s expired", user_id)
            session.invalidate()
            return None
        user = await self._users.get(user_id)
        if user is None or not user.active or user.session_epoch != epoch:
            session.invalidate()
            return None
        return Pending(user, stage, secret if isinstance(secret, str) else None, how)

    async def advance(self, request: web.Request, stage: str, secret: str | None = None, how: str = "") -> None:
        """Move a pending session to its next step (the time limit still runs from the password)."""
        session = await get_session(request)
        data = dict(session["pending"])
        data["stage"], data["secret"], data["how"] = stage, secret, how
        session["pending"] = data

    # -- signed in -------------------------------------------------------------------------------

    async def sign_in(self, request: web.Request, user: User, how: str) -> None:
        """Start a signed-in session for `user`, who gave a right password and then a second factor
        (`how`: "code", "recovery", "enrolment"). The session is replaced, not reused."""
        if not user.active:
            raise ValueError("a disabled user cannot be signed in")
        agent = request.headers.get("User-Agent", "")
        token = await self.records.start(user.id, user.session_epoch, agent, self._clock.now(), how)
        session = await self._new(request)
        session["sid"] = token
        request[_USER] = user
        log.info("user %s signed in (%s)", user.id, how)

    async def current_user(self, request: web.Request, activity: bool = True) -> User | None:
        """The signed-in user, or None (and the cookie is cleared) when the session has ended or
        expired, the account was disabled, or its password or factor was reset. A half-signed-in
        session is None here. activity=False for requests a page makes by itself (a refresh
        timer): they do not count as use, so they cannot keep an unattended screen signed in."""
        if _USER in request:
            return request[_USER]
        session = await get_session(request)
        token = session.get("sid")
        if not isinstance(token, str):
            return None
        record = await self.records.live(token, self._clock.now(), activity)
        user = await self._users.get(record.user_id) if record else None
        if record is None or user is None or not user.active:
            session.invalidate()
            return None
        request[_USER] = user
        request[_RECORD] = record
        return user

    async def current_session(self, request: web.Request) -> SessionRecord | None:
        """This request's session record (after current_user found a user)."""
        if await self.current_user(request, activity=False) is None:
            return None
        return request.get(_RECORD)

    async def sign_out(self, request: web.Request) -> None:
        """End this session (a half-signed-in one too). Call after require_csrf."""
        user = await self.current_user(request, activity=False)
        record = request.get(_RECORD)
        session = await get_session(request)
        session.invalidate()
        request.pop(_USER, None)
        request.pop(_RECORD, None)
        if user is not None and record is not None:  # only a live session is ended (not a stale copy)
            now = self._clock.now()
            await self.records.end(record.id, user.id, "signed_out", now, actor=events.actor_of(user.id))
            log.info("user %s signed out", user.id)
