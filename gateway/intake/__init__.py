"""Intake: the edges where referrals come in. Each authenticates its transport, stores the raw
bytes durably (`store`, a group commit) and only then says yes; reading happens later, in the
pipeline, from the stored copy.

Takes SMTP sessions (`smtp`, bounded in number and idle time by `smtp_sessions`), the public form
(`web_form`, with `form_model`, `form_tokens` and `rate_limit`) and Twilio's webhooks (`sms_webhooks`,
checked by `twilio_signature`, answered by `sms_replies`). Gives stored messages, each with a referral
in state `received` and a reference.

May import: gateway.web (page headers and templates), gateway.track (an ACK by SMS),
gateway.deliver (SMS status callbacks) and every stage below them.
"""
