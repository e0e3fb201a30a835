"""Open: take the security layers off a stored message and judge who sent it.

Takes the raw bytes as received (an email) or the stored envelope (an SMS). Gives the content to
parse and a typed `security.Security` verdict, or raises Quarantine: `opener` (the open stage for
email), `unwrap` (PGP/MIME, inline PGP and S/MIME in any nesting, byte-exact, over `mimebytes`),
`policy` (is this good enough, and which partner vouched), `mime` (reading what is inside, over
`mimeread`: the stdlib parser with nesting bounded and headers read as text, never raising),
`identity` (the gateway's keys and each partner block's own trust), `dev_keys` (the embedded default's
keys, made on first run), `crypto` (gpg and openssl at the edge),
`sms` (a text from a registered number), `attachments` (re-read for the staff pages).

May import: gateway.config, gateway.parse, gateway.duty, gateway.core.
"""
