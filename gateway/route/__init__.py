"""Route: which team gets a referral, and whom each escalation step alerts. Pure functions over
the config's rules (data, not code) and an instant.

Takes a Referral, the Settings and the facts of its arrival. Gives: `rules` (the first matching
route, in or out of hours, with the reason for every rule), `escalate` (a step's targets, skipped
steps, when the next step falls due), `coverage` (check-config's proof that someone is reachable
on duty), `explain` (`route --explain`).

May import: gateway.config, gateway.duty, gateway.parse, gateway.core.
"""
