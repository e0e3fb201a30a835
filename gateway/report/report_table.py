"""The coordinators' report as a table for a terminal (`referral-gateway report undelivered`).

By default every line fits 100 columns, the width of a terminal or an email a coordinator pastes
it into: a line per item with its reference, state, when received, age and team, then its reason
indented below, wrapped (at most REASON_LINES lines; the rest is cut with "..."). The escalation is
left out there. `--wide` gives one line per item with every column in full, as the command always
printed it; CSV and JSON are unchanged (gateway.report.undelivered.render).
"""

from __future__ import annotations

import textwrap

HEADER = ["reference", "team", "state", "received", "age", "escalation", "reason"]
WIDTH = 100
TEAM_WIDTH = 30  # a longer team name is cut with "..."; --wide shows it whole
REASON_LINES = 3
_INDENT = "    "


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def narrow(cells: list[list[str]]) -> str:
    """Each item in at most 1 + REASON_LINES lines of at most WIDTH characters."""
    firsts = [[c[0], c[2], c[3], c[4], _cut(c[1], TEAM_WIDTH)] for c in cells]
    header = ["reference", "state", "received", "age", "team"]
    widths = [max(len(h), *(len(f[i]) for f in firsts)) for i, h in enumerate(header)]
    lines = [_line(header, widths)]
    for first, c in zip(firsts, cells, strict=True):
        lines.append(_line(first, widths))
        wrapped = textwrap.wrap(c[6], WIDTH - len(_INDENT), break_on_hyphens=False) or ["-"]
        if len(wrapped) > REASON_LINES:
            wrapped = [*wrapped[: REASON_LINES - 1], _cut(" ".join(wrapped[REASON_LINES - 1 :]), WIDTH - len(_INDENT))]
        lines += [_INDENT + text for text in wrapped]
    return "\n".join(lines) + "\n"


def wide(cells: list[list[str]]) -> str:
    """One line per item, every column in full (as wide as the longest reason)."""
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADER[:-1])]
    lines = [_line(HEADER, [*widths, 0])]
    lines += [_line(c, [*widths, 0]) for c in cells]
    return "\n".join(lines) + "\n"


def _line(values: list[str], widths: list[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()
