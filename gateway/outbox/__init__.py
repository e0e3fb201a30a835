"""Outbox: what to send, composed and queued as rows; never sent from here.

Takes a routed referral (or a fired escalation step). Gives: `dispatch` (route, deadline, the
chain's steps and their alerts), `alerting` (one alert per recipient and channel, with content
for those with a key), `compose` (every email and SMS from templates/), `protect` (encrypt and
sign to a recipient's key), `enqueue` (outbox rows in the caller's transaction), `tokens`
(acknowledgement links bound to a referral and a recipient) with their keys' rotation and
overlap (`token_keys`).

May import: gateway.route, gateway.open, gateway.config, gateway.parse, gateway.duty, gateway.core.
"""
