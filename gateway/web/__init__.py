"""Web: the pages staff and duty workers use, and what every page shares.

Takes HTTP requests from signed-in staff (and acknowledgement links). Gives: `ack_pages` (the
link's confirm page; a POST acknowledges), `sign_in_pages` (password, then a code or a recovery
code; enrolment at the first sign-in; sign-out), `account_pages` (one's sessions, re-authentication,
changing one's password or authenticator), `dashboard` with `dashboard_data` (queues, a referral,
acknowledge and close, a legal hold), `report_page` (the coordinators' report and decisions), `admin_pages` and
`config_view` (accounts and the config), `session` (the cookie naming a session, half-signed-in state, CSRF), `headers`
(the CSP nonce and security headers), `templates` (the Jinja environments), `monitoring` (/metrics,
/livez and /readyz).

May import: gateway.report, gateway.track, gateway.outbox, gateway.route, gateway.open,
gateway.config, gateway.staff and below; never gateway.intake.
"""
