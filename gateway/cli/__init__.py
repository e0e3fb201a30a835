"""CLI: the `referral-gateway` command (also `python -m gateway`).

Takes command lines. Gives: `main` (serve, check-config, route --explain, report, verify), `keys`
(the group) with one module per command (`keys_init`,
`keys_import`, `keys_list`, `keys_export`, `keys_rotate`: rotate, rotation-status, retire-unused),
their shared helpers (`keys_common`) and what `keys import` tells an administrator to put in the
config (`keys_suggest`), `users` (add, disable, reset-password, list), `retention` (purge, hold),
`database` (one runner for the commands that open the store), `groups` (the subcommand plumbing),
`backup` and `restore` (with `backup_db` for the database copy, `backup_keys` for keys/ encrypted to
the administrator's key and `backup_manifest` for manifest.json).

May import: anything in gateway.
"""
