"""A plain-text email's bytes, written directly: the same bytes as compat32's
`MIMEText(body, "plain", "utf-8").as_bytes()`, without building a Message and running the
generator, which folds every header through email.header.Header. That took about 180 µs an email
here, and a referral's alerts and receipt are several emails; this takes about 9 µs.

Only headers that need no folding or encoding take this way (printable ASCII, single spaces, a
line within 78 characters); anything else returns None and the caller uses the email package.
tests/test_outbox_plaintext.py checks the two give the same bytes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

_MAX_LINE = 78  # compat32's fold length: a longer header line would be folded
_SIMPLE = re.compile(r"[!-~]+(?: [!-~]+)*\Z")  # what Header.encode leaves exactly as it is
_MIME = b'Content-Type: text/plain; charset="utf-8"\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n'


def plain_text(headers: Sequence[tuple[str, str]], body: str) -> bytes | None:
    """The email's bytes (base64 UTF-8 body, "\\n" line ends, as MIMEText makes it), or None when
    a header is not simple enough to write as it is."""
    lines = []
    for name, value in headers:
        if len(name) + 2 + len(value) > _MAX_LINE or not _SIMPLE.match(value):
            return None
        lines.append(f"{name}: {value}\n")
    try:
        encoded = body.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the email package decides what to do with it
        return None
    return _MIME + "".join(lines).encode("ascii") + b"\n" + base64.encodebytes(encoded)
