"""Staff: the accounts of the people who sign in to the staff pages.

Takes usernames and passwords. Gives: `users` (add, disable, reset, sign in with lockout; roles
duty, coordinator, admin; argon2id hashes) and `passwords` (the policy).

May import: gateway.core.
"""
