"""Core: the pure state machine and the durable state every stage shares.

Takes nothing from the other stages. Gives: the tables (`schema`) and migrations, the database with
its one way to write (`db`), leased queues (`queue`), the hash-chained audit log (`audit`), the
referral lifecycle (`lifecycle`, pure) and the one place a referral's state is written
(`transitions`), sealing at rest (`sealing`) with typed access to every sealed column (`sealed`), its key's
rotation on disk (`sealing_keys`) and the background re-seal of every sealed column (`reseal`),
typed rows (`records`), the injected clock and UK time (`clock`), outcomes as exceptions
(`outcomes`), secret key files (`keyfiles`), strict base64url for signed values (`b64url`), the
referral's plain values (`model`), its reference (`reference`), what the libraries may write
to the logs (`logs`: no request text, no storms) and in which shape (`log_format`: text or JSON
lines), and what a gateway counts for /metrics and when its loops last stepped (`metrics`: objects
each gateway owns, never a global registry).

May import: nothing in gateway outside core.
"""
