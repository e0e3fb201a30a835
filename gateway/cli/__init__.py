"""CLI: the `referral-gateway` command (also `python -m gateway`).

Takes command lines. Gives: `main` (serve, check-config, route --explain, report, verify), `keys`
(init, import, list, export), `users` (add, disable, reset-password, list), `groups` (the
subcommand plumbing they share).

May import: anything in gateway.
"""
