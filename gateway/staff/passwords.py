"""The password policy for staff accounts: long enough, not the username, not one of the most
common passwords (with digits or symbols added, or letters swapped for look-alikes). Each refusal
says what is wrong and what to do; none repeats the password.
"""

from __future__ import annotations

import re
import unicodedata

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # far above any real passphrase; bounds the work a sign-in can ask for
MIN_DISTINCT_CHARACTERS = 5

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

# Bases of the passwords people choose most (breach lists, and words of this job). A password is
# refused when, with digits and symbols trimmed from its ends and common substitutions undone
# (p@ssw0rd), it is nothing but these words: "Summer2025!" and "passwordpassword" are refused.
COMMON_WORDS = frozenset(
    """
    password passw0rd pass word qwerty qwertz azerty asdfgh asdfghjkl zxcvbn zxcvbnm qazwsx letmein
    welcome iloveyou love admin administrator changeme default secret login master monkey dragon
    football baseball soccer cricket rugby liverpool chelsea arsenal tottenham everton manchester
    united sunshine princess shadow superman batman michael charlie jordan jennifer thomas hunter
    trustno starwars pokemon whatever freedom abcdef abcdefgh abcdefghijkl computer internet hello
    test testing guest user summer winter spring autumn january february march april june july
    august september october november december monday tuesday wednesday thursday friday saturday
    sunday london england britain safeguarding social socialwork socialworker children childrens
    services council referral referrals gateway mash duty team nhs correct horse battery staple
    """.split()
)
_KEYBOARD_RUNS = (
    "1234567890" * 3,
    "0987654321" * 3,
    "qwertyuiopasdfghjklzxcvbnm",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
    "qazwsxedcrfvtgbyhnujmikolp",
    "abcdefghijklmnopqrstuvwxyz",
)
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_ENDS = re.compile(r"^[\W\d_]+|[\W\d_]+$")


class UserError(Exception):
    """A request an administrator can correct: the message says what is wrong and what to do."""


class PasswordPolicyError(UserError):
    pass


def normalise_password(password: str) -> str:
    # NFKC, as NIST SP 800-63B advises: the same password typed on another keyboard or system
    # (composed or decomposed accents, full-width digits) must give the same hash.
    return unicodedata.normalize("NFKC", password)


def _only_common(text: str) -> bool:
    folded = text.casefold()
    alnum = re.sub(r"[\W_]", "", folded)
    if any(alnum in run for run in _KEYBOARD_RUNS):
        return True
    core = re.sub(r"[\W\d_]", "", _ENDS.sub("", folded).translate(_LEET))
    if not core:
        return False  # digits and symbols only, and not a keyboard run: judged by length alone
    if len(core) >= 6 and any(core in run for run in _KEYBOARD_RUNS):
        return True
    for word in sorted(COMMON_WORDS, key=len, reverse=True):
        core = core.replace(word, "")
    return core == ""


def check_password(password: str, username: str) -> None:
    """Raise PasswordPolicyError, saying what to do, unless `password` is acceptable for `username`."""
    text = normalise_password(password)
    hint = "a phrase of three or four unrelated words is long and easy to remember"
    if len(text) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(
            f"the password has {len(text)} characters; use at least {MIN_PASSWORD_LENGTH} ({hint})"
        )
    if len(text) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the password has {len(text)} characters; use at most {MAX_PASSWORD_LENGTH}")
    if CONTROL.search(text):
        raise PasswordPolicyError("the password holds control characters; use only characters you can type")
    folded = text.casefold()
    name = username.strip().casefold()
    if name and (folded == name or (len(name) >= 4 and name in folded)):
        raise PasswordPolicyError("the password contains the username; choose one that does not")
    if len(set(folded)) < MIN_DISTINCT_CHARACTERS:
        raise PasswordPolicyError(
            f"the password uses fewer than {MIN_DISTINCT_CHARACTERS} different characters; choose one that "
            f"does not repeat a few characters ({hint})"
        )
    if _only_common(text):
        raise PasswordPolicyError(
            "the password is one of the most common ones (perhaps with digits or symbols added), which "
            f"attackers try first; choose another ({hint})"
        )
