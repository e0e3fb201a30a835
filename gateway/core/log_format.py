"""How `serve` writes its log lines: plain text for a person at a terminal, or one JSON object per
line for a log shipper ([logging] format = "json"): time (ISO 8601, UTC), level, logger, message,
and an exception's type and frames if there is one.

Formatting decides only the shape. What a line may hold was decided before: the redaction filter
(gateway.core.logs) has already withheld the arguments and exception text of the libraries'
records, and the gateway's own messages carry references and ids only. An exception's text is
left out here too (its type and our code's frames are what an operator needs; its text is where a
library puts what it was given).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["exception"] = {
                "type": type(exc).__name__,
                "frames": [
                    {"file": frame.filename, "line": frame.lineno, "function": frame.name}
                    for frame in traceback.extract_tb(exc.__traceback__)
                ],
            }
        elif record.exc_text:
            # Already made safe by the redaction filter: frames and types, every text withheld.
            line["exception"] = {"traceback": record.exc_text}
        # ensure_ascii: one line whatever the message holds (a newline is escaped, never written).
        return json.dumps(line, ensure_ascii=True)


def configure(format: Literal["text", "json"], level: int = logging.INFO) -> None:
    """The root handler on stderr (systemd's journal, or whatever ships the logs)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
