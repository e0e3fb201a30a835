"""Neighbouring authorities (issue 15): where a duty worker may send a referral that is "not ours".

Each [[neighbours]] block names another council's referral address and, when it is known, the key
its mailbox reads with. With a key, the forward carries the referral's content encrypted to it; without
one, only a notice with no personal data (a referral is waiting, its reference, whom to call).
"""

from __future__ import annotations

from pathlib import Path

from gateway.config.errors import ConfigIssue
from gateway.config.fields import Email, Fingerprint, Strict


class Neighbour(Strict):
    name: str  # the authority as staff know it ("Borsetshire Council children's services")
    address: Email  # its referral (front door / MASH) mailbox
    phone: str = ""  # its duty line, for the referrer notice and our own staff
    # The key its mailbox reads with (imported with `referral-gateway keys import`), or an S/MIME
    # certificate (PEM) under keys/. Neither: forwards carry no personal data.
    openpgp: Fingerprint | None = None
    smime_cert: Path | None = None


def neighbour_checks(
    neighbours: tuple[Neighbour, ...], team_addresses: set[str], file: Path, home: Path
) -> list[ConfigIssue]:
    """Each neighbour once, none at one of our own teams' mailboxes (a forward would come back), and
    its certificate present. An OpenPGP key's import is checked at start, as for teams' keys."""
    issues: list[ConfigIssue] = []
    seen: dict[str, int] = {}
    for index, n in enumerate(neighbours):
        key = n.name.strip().lower()
        if not key:
            issues.append(ConfigIssue(file, f"neighbours[{index}].name", "the name is empty", "name the authority"))
        elif key in seen:
            issues.append(
                ConfigIssue(
                    file,
                    f"neighbours[{index}].name",
                    f"'{n.name}' is also neighbours[{seen[key]}]",
                    "keep one [[neighbours]] block per authority",
                )
            )
        seen.setdefault(key, index)
        if n.address.lower() in team_addresses:
            issues.append(
                ConfigIssue(
                    file,
                    f"neighbours[{index}].address",
                    f"{n.address} is one of our own teams' mailboxes",
                    "use the neighbouring authority's referral address; to pass a referral to another of our "
                    "teams, answer 'not ours' with that team",
                )
            )
        if n.smime_cert and not (home / n.smime_cert).is_file():
            issues.append(
                ConfigIssue(
                    file,
                    f"neighbours[{index}].smime_cert",
                    f"{home / n.smime_cert} does not exist",
                    "put the neighbour's S/MIME certificate (PEM) there, or remove smime_cert",
                )
            )
    return issues


def find_neighbour(neighbours: tuple[Neighbour, ...], name: str) -> Neighbour | None:
    return next((n for n in neighbours if n.name == name), None)
