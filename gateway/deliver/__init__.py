"""Deliver: send what the outbox queued, at least once, and record what happened.

Takes outbox rows, claimed with a lease. Gives: `worker` (send outside any transaction, record
the outcome after; capped exponential backoff; a dead alert makes its referral undeliverable; a
delivery about no referral, the digest, is sent and recorded on the audit chain alone),
`transports` (a maildir, or the council's relay over STARTTLS), `twilio` (SMS with the real
client), `sms_status` (Twilio's status callbacks and reconciliation by SID).

May import: gateway.config, gateway.core (never the stages that fill the outbox).
"""
