"""Web: the pages staff and duty workers use, and what every page shares.

Takes HTTP requests from signed-in staff (and acknowledgement links). Gives: `ack_pages` (the
link's confirm page; a POST acknowledges), `dashboard` with `dashboard_data` (queues, a referral,
acknowledge and close), `report_page` (the coordinators' report and decisions), `admin_pages` and
`config_view` (accounts and the config), `session` (encrypted cookie sessions, CSRF), `headers`
(the CSP nonce and security headers), `templates` (the Jinja environments).

May import: gateway.report, gateway.track, gateway.outbox, gateway.route, gateway.open,
gateway.config, gateway.staff and below; never gateway.intake.
"""
