"""Check the X-Twilio-Signature on a webhook Twilio sent us (inbound SMS, message status callbacks).

Pure: no I/O, no config lookups. The HMAC itself is twilio's own ``RequestValidator``; this module only
decides *which* URL and parameters to hand it and turns every failure into ``False``.

Which URL: Twilio signs the URL it called, i.e. the public one configured in Twilio (or the StatusCallback
we gave it), so :func:`request_url` rebuilds it from the configured public base URL plus the request's path and
query *as received* (aiohttp: ``request.path_qs``, which keeps the request-target's own percent-encoding).
``request.url`` is wrong behind a reverse proxy: it is the proxy's upstream URL, so every signature would fail.

URL-normalisation rule (the ``url-special-chars`` known answer):
    Twilio's Node SDK runs the URL through the WHATWG URL parser (``new URL()``) before signing, which
    percent-encodes a few characters that may appear raw in a URL: in the query ``'`` (for http/https), space,
    ``"``, ``<``, ``>``; in the path also ``` ` ``, ``{``, ``}``, ``^``; everywhere C0 controls, DEL and
    non-ASCII (as UTF-8). twilio-python signs the string exactly as given. So a request whose URL contains
    such a character may carry either signature. We accept a signature over **either** the URL exactly as
    received **or** its WHATWG-normalised form (each with and without the default port, as the SDK
    already does).

    Why that is safe: the normalised form only percent-encodes characters that are never delimiters in the
    path or the query, so every URL parser we use (aiohttp/yarl, ``urllib.parse``) decodes both forms to the
    same path and the same query names and values. A signature over one is therefore a signature over the
    same request: it lets no one change what the gateway acts on. It adds at most two more HMAC
    comparisons, which does not make a forgery measurably easier (each guess is still 1 in 2**160).

    What we deliberately do *not* do: decode (``%27`` -> ``'``), because decoding ``%26``/``%3D``/``%2F``
    changes how the URL splits into parameters or segments, so a signature over the decoded form would
    bind a different request; nor any other WHATWG rewriting (``\\`` -> ``/``, resolving ``.``/``..``
    segments, host lowercasing or IDNA), because those change which resource the URL names. A request
    whose wire URL has ``%27`` but was signed over ``'`` is rejected. The percent-encode sets are those of
    the current WHATWG URL Standard (``^`` joined the path set only recently; an older signer that left
    ``^`` raw still matches the as-received form unless the same URL also has a ``'`` in its query).

JSON bodies: Twilio puts ``bodySHA256=hex(sha256(body))`` in the URL and signs the URL alone. A body is only
accepted with a ``bodySHA256`` to check it against, and a URL carrying ``bodySHA256`` is only accepted with
the body, so a signed JSON request cannot be replayed as a form post with its body swapped.

Only the account auth token (HMAC-SHA1) is supported; a request signed with a SharedKey
(``X-Twilio-Webhooks-Signature-Settings``, HMAC-SHA256) fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from multidict import MultiDict

# twilio ships no type information (pyproject's mypy override): RequestValidator is Any to mypy, so its
# results are wrapped in bool() and its behaviour is pinned by the known-answer tests instead.
from twilio.request_validator import RequestValidator

__all__ = ["is_valid", "request_url", "whatwg_normalised"]

logger = logging.getLogger(__name__)

# WHATWG URL Standard, "percent-encode sets" (C0 controls, DEL and non-ASCII are added in _percent_encode).
# '#' and '?' are in the spec's sets but cannot reach them here: they delimit the components we split off.
_QUERY_SET = frozenset(' "#<>')
_SPECIAL_QUERY_SET = _QUERY_SET | {"'"}
_PATH_SET = _QUERY_SET | frozenset("?^`{}")
_SPECIAL_SCHEMES = ("http", "https")


def request_url(public_base_url: str, path_qs: str) -> str:
    """The URL Twilio called: ``public_base_url`` (scheme, host, optional port and any prefix that a proxy
    strips, e.g. ``https://referrals.council.example``) followed by the path and query as received.

    Raises ValueError for a base URL that is not ``http(s)://host...`` without query or fragment, or for a
    ``path_qs`` that is not origin-form (starting with ``/``): both are programming or configuration errors,
    and guessing would only produce URLs no signature matches.
    """
    parts = urlsplit(public_base_url)
    if parts.scheme not in _SPECIAL_SCHEMES or not parts.hostname or "?" in public_base_url or "#" in public_base_url:
        raise ValueError("public base URL must be http(s)://host[:port][/prefix], without query or fragment")
    if not path_qs.startswith("/"):
        raise ValueError("path_qs must be the request's path and query as received, starting with '/'")
    return public_base_url.rstrip("/") + path_qs


def whatwg_normalised(url: str) -> str:
    """``url`` with its path and query percent-encoded as the WHATWG URL parser would (see module docstring).

    Only percent-encoding is applied; scheme, authority and structure are left exactly as given. A URL that
    is not http(s) is returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SPECIAL_SCHEMES:
        return url
    authority_end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index != -1:
            authority_end = min(authority_end, index)
    authority, tail = rest[:authority_end], rest[authority_end:]
    tail, hash_sign, fragment = tail.partition("#")
    path, question_mark, query = tail.partition("?")
    return (
        f"{scheme}://{authority}"
        + _percent_encode(path, _PATH_SET)
        + question_mark
        + _percent_encode(query, _SPECIAL_QUERY_SET)
        # Twilio never sends a fragment; leave one untouched rather than guess at its encoding.
        + hash_sign
        + fragment
    )


def _percent_encode(text: str, encode_set: frozenset[str]) -> str:
    # '%' itself is never encoded (WHATWG leaves existing escapes, valid or not, alone).
    return "".join(
        "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
        if char in encode_set or not 0x20 <= ord(char) <= 0x7E
        else char
        for char in text
    )


def is_valid(
    auth_token: str,
    url: str,
    params: Sequence[tuple[str, str]] | None,
    signature: str | None,
    body: bytes | None = None,
) -> bool:
    """True only if ``signature`` (the X-Twilio-Signature header) is Twilio's signature of this request.

    ``url`` is the URL Twilio called (:func:`request_url`). ``params`` are the form fields in the order
    posted, repeated names allowed (aiohttp: ``list((await request.post()).items())``). ``body`` is the raw
    body of a JSON webhook (then ``params`` must be empty). Never raises: anything odd is ``False``.
    """
    if not signature:
        return False
    if not auth_token:
        # An HMAC keyed with "" is computable by anyone; config must refuse this, but never accept it here.
        return False
    try:
        return _check(auth_token, url, params or (), signature, body)
    except Exception as exc:  # noqa: BLE001
        # Catch-all on purpose: the validator raises on malformed input (e.g. TypeError for a JSON body
        # without bodySHA256, UnicodeError for a non-UTF-8 body). Whatever the cause, the request is
        # unauthenticated and must be refused, never turned into a 500. The exception text is not logged:
        # it can hold the request's content.
        logger.warning("Twilio signature check failed with %s; treating the request as unsigned", type(exc).__name__)
        return False


def _check(auth_token: str, url: str, params: Sequence[tuple[str, str]], signature: str, body: bytes | None) -> bool:
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    has_body_hash = bool(query.get("bodySHA256", [""])[0])
    payload: MultiDict[str] | str
    if body is None:
        if "bodySHA256" in query:
            # Twilio adds bodySHA256 only to JSON webhooks; without the body there is nothing to check it
            # against, and accepting would let a signed JSON request be replayed with any content.
            return False
        # A MultiDict, not a dict: RequestValidator reads repeated names through getall(), and a dict
        # would keep only the last value of each name.
        payload = MultiDict(params)
    else:
        if params or not has_body_hash:
            # A JSON webhook has no form fields, and its body is only bound to the signature by bodySHA256.
            return False
        # The validator hashes str.encode("utf-8"); strict decoding makes that re-encoding byte-identical.
        payload = body.decode("utf-8")

    validator = RequestValidator(auth_token)
    candidates = [url]
    normalised = whatwg_normalised(url)
    if normalised != url:
        candidates.append(normalised)
    # validate() itself also tries each URL with and without the default port, as Twilio's backends differ.
    return any(bool(validator.validate(candidate, payload, signature)) for candidate in candidates)
