"""X-Twilio-Signature checks against the known answers from Twilio's own SDK test suites (copied into
tests/vectors, see the README there) and against signatures computed here by an independent stdlib HMAC
written from the algorithm's description, never by the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from gateway.intake.twilio_signature import is_valid, request_url, whatwg_normalised

VECTORS_FILE = Path(__file__).resolve().parent / "vectors" / "twilio-webhook-signature" / "vectors.json"
# From the shared vector set's SHA256SUMS: the copy must stay byte-identical to what was checked there.
VECTORS_SHA256 = "e3737d3de189727f1ca7b8d72c03ad7267da32eb68211856490b54f2fd6007e0"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
TOKEN: str = VECTORS["auth_token"]

# Self-computed (not upstream) SMS-shaped vector from the shared set's sdk-crosscheck.out: non-ASCII body,
# 32-hex token, query string in the URL. twilio-python and a stdlib HMAC agreed on it.
SMS_TOKEN = "0123456789abcdef0123456789abcdef"
SMS_URL = "https://gateway.example.test/twilio/sms?tenant=clinic-7"
SMS_PARAMS = [
    ("ToCountry", "GB"),
    ("SmsMessageSid", "SM0123456789abcdef0123456789abcdef"),
    ("NumMedia", "0"),
    ("Body", "Referral for J. Smith, DOB 01/02/1960 \u2013 urgent \U0001f691"),
    ("From", "+447700900123"),
    ("To", "+447700900456"),
    ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
    ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
    ("NumSegments", "1"),
    ("SmsStatus", "received"),
    ("ApiVersion", "2010-04-01"),
]
SMS_SIGNATURE = "F7CLfU4DofzkDUt1ktL9HIFvsYA="

PUBLIC_BASE = "https://referrals.council.example"
PROXY_BASE = "http://127.0.0.1:8080"  # what request.url would say behind the reverse proxy


def stdlib_signature(token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(token, url + each sorted name followed by its sorted distinct values)), from the
    vectors' _about text."""
    names = sorted({name for name, _ in pairs})
    message = url + "".join(name + value for name in names for value in sorted({v for n, v in pairs if n == name}))
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha1).digest()).decode()


def pairs_of(vector: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in vector["params"]]


def body_of(vector: dict[str, Any]) -> bytes | None:
    return vector["body"].encode() if "body" in vector else None


def test_the_copied_vectors_are_the_checked_ones() -> None:
    assert hashlib.sha256(VECTORS_FILE.read_bytes()).hexdigest() == VECTORS_SHA256
    assert len(VECTORS["vectors"]) == 16


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["id"] for v in VECTORS["vectors"]])
def test_known_answer(vector: dict[str, Any]) -> None:
    # Our documented rule: a signature over the WHATWG-normalised URL is accepted too.
    expected = vector["expect_valid"] is True or vector["expect_valid"] == "only-with-url-normalisation"
    assert is_valid(TOKEN, vector["request_url"], pairs_of(vector), vector["signature"], body_of(vector)) is expected


def test_url_special_chars_is_accepted_only_through_normalisation() -> None:
    (vector,) = [v for v in VECTORS["vectors"] if v["id"] == "url-special-chars"]
    # twilio-python alone (raw URL string) rejects it; the normalised form is exactly what Node signed.
    assert not RequestValidator(TOKEN).validate(vector["request_url"], dict(pairs_of(vector)), vector["signature"])
    assert whatwg_normalised(vector["request_url"]) == vector["sign_url"]
    assert stdlib_signature(TOKEN, vector["sign_url"], pairs_of(vector)) == vector["signature"]
    # Signed over the raw form, it is accepted as well.
    raw_signature = stdlib_signature(TOKEN, vector["request_url"], pairs_of(vector))
    assert is_valid(TOKEN, vector["request_url"], pairs_of(vector), raw_signature)


def test_repeated_params_need_every_value() -> None:
    (vector,) = [v for v in VECTORS["vectors"] if v["id"] == "repeated-params"]
    pairs = pairs_of(vector)
    assert is_valid(TOKEN, vector["request_url"], pairs, vector["signature"])
    # Dropping the other Digits value (what a plain dict would do) breaks it.
    assert not is_valid(
        TOKEN, vector["request_url"], [p for p in pairs if p != ("Digits", "5678")], vector["signature"]
    )


def test_self_computed_sms_vector() -> None:
    assert stdlib_signature(SMS_TOKEN, SMS_URL, SMS_PARAMS) == SMS_SIGNATURE
    assert is_valid(SMS_TOKEN, SMS_URL, SMS_PARAMS, SMS_SIGNATURE)


def test_checks_md_ready_made_sms_post() -> None:
    # The shared CHECKS.md's curl example (self-computed there): the gateway's own form endpoint on loopback.
    params = [
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "+447700900123"),
        ("To", "+447700900456"),
        ("Body", "Referral: J. Smith \u2013 urgent"),
        ("NumMedia", "0"),
    ]
    assert is_valid(SMS_TOKEN, "http://127.0.0.1:8000/twilio/sms", params, "hHtZGIiRzM+A8bzPwOqfHIyhWdA=")


def test_a_tampered_param_is_rejected() -> None:
    tampered = [(n, "Referral for someone else" if n == "Body" else v) for n, v in SMS_PARAMS]
    assert not is_valid(SMS_TOKEN, SMS_URL, tampered, SMS_SIGNATURE)
    added = [*SMS_PARAMS, ("Extra", "1")]
    assert not is_valid(SMS_TOKEN, SMS_URL, added, SMS_SIGNATURE)


def test_a_wrong_token_is_rejected() -> None:
    assert not is_valid("fedcba9876543210fedcba9876543210", SMS_URL, SMS_PARAMS, SMS_SIGNATURE)


def test_an_empty_token_never_validates() -> None:
    # HMAC with an empty key is computable by anyone.
    assert not is_valid("", SMS_URL, SMS_PARAMS, stdlib_signature("", SMS_URL, SMS_PARAMS))


@pytest.mark.parametrize("signature", [None, ""])
def test_a_missing_signature_header_is_rejected(signature: str | None) -> None:
    assert not is_valid(SMS_TOKEN, SMS_URL, SMS_PARAMS, signature)


def test_the_public_url_validates_and_the_proxy_url_does_not() -> None:
    path_qs = "/twilio/sms?tenant=clinic-7"
    signature = stdlib_signature(SMS_TOKEN, PUBLIC_BASE + path_qs, SMS_PARAMS)
    assert is_valid(SMS_TOKEN, request_url(PUBLIC_BASE, path_qs), SMS_PARAMS, signature)
    assert not is_valid(SMS_TOKEN, PROXY_BASE + path_qs, SMS_PARAMS, signature)


def test_a_different_query_is_rejected() -> None:
    signature = stdlib_signature(SMS_TOKEN, SMS_URL, SMS_PARAMS)
    assert not is_valid(SMS_TOKEN, SMS_URL.replace("clinic-7", "clinic-8"), SMS_PARAMS, signature)


def test_no_params_is_a_request_with_no_fields() -> None:
    url = PUBLIC_BASE + "/twilio/status"
    assert is_valid(SMS_TOKEN, url, None, stdlib_signature(SMS_TOKEN, url, []))
    assert not is_valid(SMS_TOKEN, url, SMS_PARAMS, stdlib_signature(SMS_TOKEN, url, []))


def test_json_body_must_match_its_hash() -> None:
    (vector,) = [v for v in VECTORS["vectors"] if v["id"] == "json-body"]
    url, signature = vector["request_url"], vector["signature"]
    assert is_valid(TOKEN, url, [], signature, vector["body"].encode())
    assert not is_valid(TOKEN, url, [], signature, b'{"property": "other", "boolean": true}')
    assert not is_valid(TOKEN, url, [], signature, b"\xff\xfe not utf-8")


def test_a_json_signature_is_not_accepted_without_its_body() -> None:
    # bodySHA256 in the URL but the body not checked: a replay with any content must not pass.
    (vector,) = [v for v in VECTORS["vectors"] if v["id"] == "json-body"]
    assert not is_valid(TOKEN, vector["request_url"], [], vector["signature"])
    assert not is_valid(TOKEN, vector["request_url"], None, vector["signature"], None)


def test_a_body_with_form_fields_is_rejected() -> None:
    (vector,) = [v for v in VECTORS["vectors"] if v["id"] == "json-body"]
    assert not is_valid(TOKEN, vector["request_url"], [("To", "+1")], vector["signature"], vector["body"].encode())


def test_a_body_without_bodysha256_is_false_not_an_exception() -> None:
    # twilio-python 9.13 raises TypeError here (sdk-crosscheck.out).
    with pytest.raises(TypeError):
        RequestValidator(TOKEN).validate("https://mycompany.com/myapp.php?foo=1", "{}", "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not is_valid(TOKEN, "https://mycompany.com/myapp.php?foo=1", [], "RSOYDt4T1cUTdK1PDd93/VVr8B8=", b"{}")
    assert not is_valid(TOKEN, "https://mycompany.com/myapp.php?bodySHA256=", [], "x", b"{}")


def test_the_validator_raising_is_false(caplog: pytest.LogCaptureFixture) -> None:
    # A lone surrogate cannot be UTF-8 encoded: the validator raises inside, we answer False and log only the type.
    assert not is_valid(SMS_TOKEN, SMS_URL, [("Body", "\udcff secret")], "c2lnbmF0dXJl")
    assert "UnicodeEncodeError" in caplog.text
    assert "secret" not in caplog.text


def test_normalisation_only_percent_encodes() -> None:
    assert whatwg_normalised("https://h.example/a'b{c}^`d?e='f\"<g>&h=\u2013") == (
        "https://h.example/a'b%7Bc%7D%5E%60d?e=%27f%22%3Cg%3E&h=%E2%80%93"
    )
    # Existing escapes, reserved characters, backslashes and dot segments stay exactly as they are.
    same = "https://user:pw@H.example:8443/a/../b\\c%2Fd?q=a%26b&r=%27+x#frag"
    assert whatwg_normalised(same) == same
    assert whatwg_normalised("mailto:o'brien@example.com") == "mailto:o'brien@example.com"


def test_a_signature_over_the_decoded_url_is_not_accepted() -> None:
    # The wire URL has %26 (one value "a&b"); a signature over the decoded form binds two parameters instead.
    wire = PUBLIC_BASE + "/twilio/sms?q=a%26b"
    assert not is_valid(
        SMS_TOKEN, wire, SMS_PARAMS, stdlib_signature(SMS_TOKEN, PUBLIC_BASE + "/twilio/sms?q=a&b", SMS_PARAMS)
    )
    wire = PUBLIC_BASE + "/twilio/sms?Body=It%27s"
    assert not is_valid(
        SMS_TOKEN, wire, SMS_PARAMS, stdlib_signature(SMS_TOKEN, PUBLIC_BASE + "/twilio/sms?Body=It's", SMS_PARAMS)
    )


def test_request_url_joins_the_public_base_and_the_received_path() -> None:
    assert request_url(PUBLIC_BASE, "/twilio/sms?a=1&b=It's") == PUBLIC_BASE + "/twilio/sms?a=1&b=It's"
    assert request_url(PUBLIC_BASE + "/", "/twilio/sms") == PUBLIC_BASE + "/twilio/sms"
    assert (
        request_url("https://council.example/referrals", "/twilio/sms")
        == "https://council.example/referrals/twilio/sms"
    )
    assert request_url("http://127.0.0.1:8080", "/t?x=%27") == "http://127.0.0.1:8080/t?x=%27"


@pytest.mark.parametrize(
    ("base", "path_qs"),
    [
        ("referrals.council.example", "/twilio/sms"),
        ("ftp://referrals.council.example", "/twilio/sms"),
        ("https://", "/twilio/sms"),
        ("https://referrals.council.example?x=1", "/twilio/sms"),
        ("https://referrals.council.example#top", "/twilio/sms"),
        (PUBLIC_BASE, "twilio/sms"),
        (PUBLIC_BASE, "https://evil.example/twilio/sms"),
    ],
)
def test_request_url_refuses_what_no_signature_could_match(base: str, path_qs: str) -> None:
    with pytest.raises(ValueError, match="must"):
        request_url(base, path_qs)
