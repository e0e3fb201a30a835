"""referral-gateway: takes child-safeguarding referrals, routes and alerts them, and tracks each one
until a named person acknowledges it, so that no referral silently disappears."""

__version__ = "0.1.0"
