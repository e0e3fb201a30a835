"""What the libraries under the gateway may write to its logs: no request text, and no storms.

aiohttp's server log echoed the start of an oversized request line or header (a name and postcode
from a query string, part of a session cookie) and aiosmtpd logs commands and addresses; asyncio's
accept loop, out of file descriptors, logged a traceback thousands of times a second (117 MB in
52 s). Logs may hold references and ids only, so:

- `RedactFilter`, on the loggers of aiohttp, aiosmtpd and asyncio (where their records are made,
  so it holds whichever handlers are configured): keeps each record's fixed message, withholds
  its arguments and exception text (the type, and the code's frames, stay), and drops aiohttp's
  access log (a line of it is the request line, with the query string and any ack token).
- `RateLimitedLog`: the first line at once, then one line per interval with a count.
- `loop_exception_handler`: asyncio's errors through both of the above.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gateway.logs")

WITHHELD = "[withheld]"
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d+|\*)?(?:\.\d+)?[a-zA-Z%]")
# The loggers whose records can carry what a client sent. aiohttp.access is dropped outright.
LIBRARY_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "asyncio",
    "mail.debug",
    "mail.log",
)


def describe(exc: BaseException) -> str:
    """An exception without its text: the type, an OS error's errno name and the system's words
    for it, an HTTP error's status. (Exception text is where a library puts what it was given.)"""
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{name} [{errno.errorcode.get(exc.errno, exc.errno)}] {exc.strerror or ''}".rstrip()
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(code, int) and 400 <= code < 600:
        return f"{name} ({code})"
    return name


def _client_error(exc: BaseException) -> bool:
    # aiohttp's HttpProcessingError (bad request line, header too long, ...) carries a 4xx: the
    # client's mistake, whose traceback says nothing about our code.
    code = getattr(exc, "code", None)
    return isinstance(code, int) and 400 <= code < 500


def safe_traceback(exc: BaseException) -> str:
    """The frames (our code's file names and lines, never the data) and the exception types of the
    chain, with every exception's text withheld."""
    parts: list[str] = []
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{describe(current)}: {WITHHELD}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\nwhile handling, from:\n".join(parts)


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.access":
            return False
        message = _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else WITHHELD, str(record.msg))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f": {describe(exc)}"
            record.exc_text = None if _client_error(exc) else safe_traceback(exc)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = None  # already formatted with the text in it: nothing to keep
        record.msg, record.args = message, None
        return True


def install_redaction(names: tuple[str, ...] = LIBRARY_LOGGERS) -> None:
    """Idempotent: the gateway is started many times in one test process."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactFilter) for f in logger.filters):
            logger.addFilter(RedactFilter())


@dataclass
class _Repeats:
    message: str
    last: float
    count: int = 0
    flush: asyncio.TimerHandle | None = None


class RateLimitedLog:
    """The first event of a kind is logged at once; the same kind again within `interval` is
    counted, and the count is logged when the interval is up (by a timer on the running loop, so
    a storm that stops is still reported), one line per interval however fast events come."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int = logging.WARNING,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._kinds: dict[str, _Repeats] = {}

    def event(self, message: str, kind: str | None = None, detail: str = "") -> None:
        """`kind` groups events whose messages differ (a count in them); `detail` (a traceback)
        goes only with a line that is logged at once, not with the counts."""
        key = kind or message
        now = self._clock()
        repeats = self._kinds.get(key)
        if repeats is None or (repeats.count == 0 and now - repeats.last >= self._interval):
            self._kinds[key] = _Repeats(message, now)
            self._logger.log(self._level, "%s%s", message, f"\n{detail}" if detail else "")
            return
        repeats.message = message
        repeats.count += 1
        if repeats.flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a synchronous caller): the count waits for the next event
            delay = max(self._interval - (now - repeats.last), 0.0)
            repeats.flush = loop.call_later(delay, self._flush, key)

    def _flush(self, key: str) -> None:
        repeats = self._kinds[key]
        repeats.flush = None
        if repeats.count:
            self._logger.log(
                self._level,
                "%s (repeated %d times in the last %.3gs)",
                repeats.message,
                repeats.count,
                self._clock() - repeats.last,
            )
            repeats.count, repeats.last = 0, self._clock()

    def close(self) -> None:
        for repeats in self._kinds.values():
            if repeats.flush is not None:
                repeats.flush.cancel()
                repeats.flush = None


def loop_exception_handler(limited: RateLimitedLog) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """For `loop.set_exception_handler`: asyncio's default handler logs the context's reprs and the
    full exception with a traceback, every time. Out of descriptors, Python 3.11's accept loop
    calls it up to a hundred times per wake-up, and wakes again and again (CPython issue 151615)."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled exception in the event loop")
        exc = context.get("exception")
        if not isinstance(exc, BaseException):
            limited.event(f"asyncio: {message}")
            return
        text = f"asyncio: {message}: {describe(exc)}"
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # The listener pauses for a second and tries again; connections wait in the backlog.
            limited.event(text + "; new connections wait until descriptors are free (see LimitNOFILE)")
            return
        # Anything else: the frames with the first of its kind, to find the bug; never a storm.
        limited.event(text, detail=safe_traceback(exc))

    return handle
