"""What `keys import` tells the administrator to put in the config, from what the key or certificate says.

Two kinds of key arrive: a partner's (it signs referrals the gateway receives: a [[partners]] block) and one of
the council's own mailboxes (alerts to it are encrypted to it: `openpgp` or `smime_cert` in its [[teams]],
[[teams.members]] or [[coordinators]] entry, see gateway.outbox.protect). Which one is decided by the addresses
in the key: the config's own team, member and coordinator addresses are never suggested as a partner's.

Addresses are only ever ones found in the key or certificate. When there are none, the suggestion says so and
leaves `addresses` empty (check-config refuses that until it is filled in): a placeholder domain that looks
real would end up in a config and mean nothing, or worse, someone else's domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from gateway.cli.keys_common import toml_list, toml_string
from gateway.config import Config
from gateway.config.duty import Person, Team


@dataclass(frozen=True)
class Holder:
    """A council entry that may hold a key: where it is in the config, and how to find it there."""

    email: str
    block: str  # the table as the config spells it: [[teams]], [[teams.members]], [[coordinators]]
    entry_id: str
    where: str  # for people: "team 'mash'", "member 'asha' of team 'mash'", "coordinator 'iris'"
    holder: Team | Person


def council_holders(cfg: Config, emails: Sequence[str]) -> list[Holder]:
    """The config's team mailboxes, members and coordinators with one of these addresses."""
    wanted = {e.strip().lower() for e in emails}
    s = cfg.settings
    found: list[Holder] = []
    for team in s.teams:
        if team.email in wanted:
            found.append(Holder(team.email, "[[teams]]", team.id, f"team '{team.id}'", team))
        for member in team.members:
            if member.email in wanted:
                where = f"member '{member.id}' of team '{team.id}'"
                found.append(Holder(member.email, "[[teams.members]]", member.id, where, member))
    for person in s.coordinators:
        if person.email in wanted:
            found.append(Holder(person.email, "[[coordinators]]", person.id, f"coordinator '{person.id}'", person))
    return found


def gateway_addresses(cfg: Config, emails: Sequence[str]) -> list[str]:
    """Which of these are the gateway's own addresses (its keys come from `keys init`, not `keys import`)."""
    own = {*cfg.settings.smtp.referral_addresses, cfg.settings.mail.from_address}
    return [e for e in dict.fromkeys(x.strip().lower() for x in emails) if e in own]


def print_holder_lines(cfg: Config, holders: Sequence[Holder], key: str, value: str) -> None:
    """The line to set in each council entry whose address the key carries."""
    print()
    print(
        "its address is the council's own, so it is not a partner's key: alerts are encrypted to it once the "
        "entry below names it (the config is not changed for you):"
    )
    for holder in holders:
        current = getattr(holder.holder, key)
        print()
        if current is not None and str(current) == value:
            print(f"{holder.where} ({holder.email}) in {cfg.file} already names it.")
            continue
        print(f"in the {holder.block} entry with id = {toml_string(holder.entry_id)} ({holder.where}, {holder.email}):")
        print(f"{key} = {toml_string(value)}" + (f"  # replaces {toml_string(str(current))}" if current else ""))
    print()
    print("the gateway signs what it encrypts to them, so it needs its own key of that kind in [keys] (`keys init`).")


def ca_addresses(cert: x509.Certificate, emails: Sequence[str]) -> tuple[list[str], list[str]]:
    """The partner addresses a CA certificate itself names, and where they came from: its name constraints
    (the mailboxes and hosts it may issue for, RFC 5280 4.2.1.10), else the domains of its own addresses."""
    try:
        constraints: x509.NameConstraints | None = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    claims: list[str] = []
    subdomains: list[str] = []
    for name in (constraints.permitted_subtrees or []) if constraints else []:
        if not isinstance(name, x509.RFC822Name):
            continue  # DNS names and the like constrain servers, not mailboxes
        value = name.value.strip().lower()
        if value.startswith("."):
            subdomains.append(value)  # any host under it: a partner's addresses name domains one by one
        else:
            claims.append(value if "@" in value else f"@{value}")
    if claims or subdomains:
        notes = ["from the domains its name constraints permit"]
        if subdomains:
            under = ", ".join(d.lstrip(".") for d in subdomains)
            notes.append(f"it also permits any domain under {under}: add those the partner sends from, one by one")
        return list(dict.fromkeys(claims)), notes
    domains = list(dict.fromkeys("@" + e.rpartition("@")[2] for e in emails if "@" in e))
    if domains:
        return domains, ["from the domain of the CA's own address: it may issue for others, check with the partner"]
    return [], []


def print_partner_block(
    name: str, key: str, values: Sequence[str], addresses: Sequence[str], notes: Sequence[str]
) -> None:
    print("[[partners]]")
    print(f"name = {toml_string(name)}")
    for note in notes:
        print(f"# {note}")
    if addresses:
        print(f"addresses = {toml_list(list(dict.fromkeys(addresses)))}")
    else:
        print("# FILL IN: the key names no address or domain. Ask the partner which addresses its staff send")
        print('# from, and list them: "@trust.example" (a whole domain) or "ann@trust.example" (one address).')
        print("addresses = []")
    print(f"{key} = {toml_list(list(values))}")
