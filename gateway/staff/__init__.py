"""Staff: the accounts of the people who sign in to the staff pages, and how they sign in.

Takes usernames, passwords, codes and client addresses. Gives: `users` (add, disable, reset, sign in
with lockout; roles duty, coordinator, admin; argon2id hashes), `passwords` (the policy), `totp`
(RFC 6238 codes and the enrolment QR code), `factors` (the sealed TOTP secret, one use per code,
recovery codes), `sessions` (signed-in sessions as rows: list, end one, end all), `throttle`
(failed sign-ins per client address) and `events` (staff events in the audit chain).

May import: gateway.core.
"""
