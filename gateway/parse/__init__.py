"""Parse: what a referral says. Pure functions that never raise on bad input: every missing or
wrong field becomes a Problem, and the referral goes to triage flagged incomplete.

Takes text (an email body, a referral.json document, an SMS). Gives a `gateway.core.model.Referral`:
`referral` (email and form), `sms_text` (the SMS grammar: REF, ACK, HELP, STOP, START, free
text), with `nhs` and `postcode` checks.

May import: gateway.core.
"""
