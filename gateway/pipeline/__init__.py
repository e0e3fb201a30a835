"""Pipeline: process a stored message, from its raw bytes to a routed referral with its alerts.

Takes messages that intake stored (claimed with a lease). Gives routed or quarantined referrals:
`channels` (the named pipeline of handlers per channel), `handlers` (open, parse, route,
receipt, each small), `driver` (claim, run the pipelines, one catch-all that names the failed
stage), `write` (the batch in one transaction; a failure retried, then quarantined, with the
sender's notice and the triage team's alert), `sender` (who a quarantine notice goes to, from the
stored envelope), `repeats` (partner-signed content received again: closed as a repeat of the
referral it made, not routed), `work` (the typed records that move through).

May import: gateway.outbox, gateway.route, gateway.open, gateway.config, gateway.parse,
gateway.duty, gateway.staff (the key repeats' digests are made with), gateway.core.
"""
