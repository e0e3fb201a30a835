"""Track: everything that happens to a referral after its first alert, until it is closed.

Takes referral ids, ack claims and due deadline rows. Gives: `acks` (who may acknowledge, and what
an acknowledgement stops and tells), `deadlines` (missed deadlines and escalation steps, each fired
once), `referrer` (notices to the referrer on their own channel), `close` (the recorded outcome),
`verify` (the invariants `referral-gateway verify` checks).

May import: gateway.outbox, gateway.route, gateway.open, gateway.config, gateway.parse,
gateway.duty, gateway.core.
"""
