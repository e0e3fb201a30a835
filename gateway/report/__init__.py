"""Report: what coordinators must act on, and what happened to a referral, in words.

Takes the store. Gives: `undelivered` (late, undeliverable, quarantined and stuck referrals and
dead deliveries; nothing leaves by itself), `decisions` (a coordinator's recorded decision, the
one act that takes an item off), `timeline` (a referral's audit events as sentences), `digest` (the
daily heartbeat digest to coordinators, queued once a day through the outbox; `digest_facts`,
`digest_health` and `digest_time` say what is in it and when it is due), `metrics` (the gauges
/metrics reads from the database at each scrape), `health` (the checks /readyz makes),
`retention` (the purge of closed referrals' content, and what would go), `holds` (a coordinator's
legal hold, which retention respects).

May import: gateway.outbox, gateway.route, gateway.open (the digest: composed, encrypted, its rota
and key checks), gateway.staff, gateway.config, gateway.parse, gateway.duty, gateway.core.
"""
