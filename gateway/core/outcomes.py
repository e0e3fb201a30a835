"""Outcomes as exceptions, mapped to states and replies in one place per worker (STYLE.md #3).

Messages carry no personal data: they reach logs, reports and (for Quarantine) the sender.
"""

from __future__ import annotations


class Quarantine(Exception):
    """This message cannot be processed as it is; a person must look at it (never dropped)."""

    def __init__(self, stage: str, reason: str, notify: str | None = None, in_reply_to: str | None = None) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.notify = notify  # the sender to tell what failed (None: a null sender or automatic mail)
        self.in_reply_to = in_reply_to


class TemporaryFailure(Exception):
    """Worth trying again later (relay down, 4xx, timeout)."""


class PermanentFailure(Exception):
    """Trying again will not help (5xx from the relay: unknown mailbox, policy refusal)."""


def describe(exc: BaseException) -> str:
    """A log- and report-safe description: the exception's type and where it was raised, never
    its text (which may quote referral content)."""
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__
