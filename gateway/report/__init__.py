"""Report: what coordinators must act on, and what happened to a referral, in words.

Takes the store. Gives: `undelivered` (late, undeliverable, quarantined and stuck referrals and
dead deliveries; nothing leaves by itself), `decisions` (a coordinator's recorded decision, the
one act that takes an item off), `timeline` (a referral's audit events as sentences),
`retention` (the purge of closed referrals' content, and what would go), `holds` (a coordinator's
legal hold, which retention respects).

May import: gateway.staff, gateway.config, gateway.parse, gateway.duty, gateway.core.
"""
