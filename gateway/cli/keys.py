"""`referral-gateway keys init|import|list|export`: the gateway's own keys and its partners' public ones.

Private keys live only under keys/ (git-ignored): the gateway's OpenPGP key in keys/gnupg (mode 0700; the
sequoia backend: keys/openpgp/secret-<FPR>.asc, mode 0600) and its
S/MIME key in keys/smime (mode 0600). Partners' certificates go to keys/partners/ and the council's own mailboxes'
to keys/teams/, both committed: they are public, and the config that names them is reviewed with them. Nothing
here rewrites the config file: it belongs to the administrators (comments, order, review), so these commands
print the exact lines to put in it instead.

One module a command (keys_init, keys_import, keys_list, keys_export); what they share is in keys_common.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.groups import command_group
from gateway.cli.keys_common import KeysError
from gateway.cli.keys_export import cmd_export
from gateway.cli.keys_import import cmd_import
from gateway.cli.keys_init import cmd_init
from gateway.cli.keys_list import cmd_list
from gateway.cli.keys_move import cmd_move_from_gnupg
from gateway.cli.keys_rotate import cmd_retire_unused, cmd_rotate, cmd_rotation_status


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_config: Path) -> None:
    """Adds `keys` and its subcommands to the `referral-gateway` parser."""
    command = command_group(
        sub, "keys", "make, import, list and export keys and certificates", default_config, KeysError
    )

    p = command("init", "make the gateway's OpenPGP key and S/MIME certificate (development)", cmd_init)
    p.add_argument("--email", help="address in the key and certificate (default: mail.from_address)")
    p.add_argument("--name", help="name in the key and certificate (default: '<council> referral gateway')")
    p = command("import", "add a partner's or a council mailbox's OpenPGP public key or S/MIME certificate", cmd_import)
    p.add_argument("file", type=Path, help="armoured or binary OpenPGP public key; PEM or DER certificate")
    p.add_argument("--partner", help="the partner's name in config (and the certificate's file name)")
    command("list", "show the gateway's and partners' keys with their expiry and status", cmd_list)
    command("export", "print the gateway's public key and certificate, to send to partners", cmd_export)
    p = command("rotate", "make a new key; the old one keeps working for an overlap (see the README)", cmd_rotate)
    p.add_argument("which", choices=("sealing", "ack", "openpgp", "smime"), help="which key to rotate")
    p.add_argument("--import", dest="import_file", type=Path, help="openpgp/smime: use this key instead of making one")
    p.add_argument("--cert", type=Path, help="smime with --import: the certificate of that private key (PEM)")
    p.add_argument("--until", help="openpgp/smime: the old key decrypts until this date (default: 30 days from now)")
    p = command(
        "move-from-gnupg", "copy the OpenPGP keys from a GnuPG home to the sequoia backend's files", cmd_move_from_gnupg
    )
    p.add_argument("--from", dest="source", type=Path, help="the GnuPG home (default: keys/gnupg)")
    command("rotation-status", "how many sealed blobs remain under each old sealing key", cmd_rotation_status)
    command("retire-unused", "set aside old sealing keys no blob uses, delete expired ack keys", cmd_retire_unused)
