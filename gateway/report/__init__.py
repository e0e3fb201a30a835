"""Report: what coordinators must act on, and what happened to a referral, in words.

Takes the store. Gives: `undelivered` (late, undeliverable, quarantined and stuck referrals and
dead deliveries; nothing leaves by itself), `decisions` (a coordinator's recorded decision, the
one act that takes an item off), `timeline` (a referral's audit events as sentences), `metrics`
(the gauges /metrics reads from the database at each scrape), `health` (the checks /readyz makes).

May import: gateway.staff, gateway.config, gateway.parse, gateway.duty, gateway.core.
"""
