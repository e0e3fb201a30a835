"""The Jinja environments of our HTML pages, and the rendering every staff page shares.

In gateway.web, not with the public form that uses it too: the form (gateway.intake) sits above the
web layer and may import from it, never the other way round.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from gateway.config import Config
from gateway.core.clock import uk_time
from gateway.report.plain_words import state_words, urgency_words
from gateway.staff.users import User
from gateway.web.headers import new_nonce
from gateway.web.session import CSRF_FIELD, csrf_token


def form_environment(templates_dir: Path) -> jinja2.Environment:
    """Our templates under templates/web (form/...) and govuk-frontend-jinja's macros.

    Lenient undefined, not StrictUndefined: the macros test optional parameters that are absent."""
    loader = jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader(templates_dir / "web"),
            jinja2.PrefixLoader({"govuk_frontend_jinja": jinja2.PackageLoader("govuk_frontend_jinja")}),
        ]
    )
    return jinja2.Environment(loader=loader, autoescape=True)


def user_text(value: object) -> Markup:
    """A value from outside (referral content, a staff name): escaped, and isolated so that
    bidirectional controls in it cannot reorder the text around it."""
    return Markup('<bdi class="app-user-text">{}</bdi>').format(escape("" if value is None else str(value)))


def staff_environment(config: Config) -> jinja2.Environment:
    """The form's environment (the staff pages share its layout) with the filters staff pages use."""
    env = form_environment(config.templates_dir)
    env.filters["uk_time"] = uk_time
    env.filters["user"] = user_text
    env.filters["state_words"] = state_words  # every state a staff page shows, in plain words
    env.filters["urgency_words"] = urgency_words
    return env


class StaffPages:
    """Renders templates/web/staff/* for any staff page: the council's details, the page's nonce
    (gateway.web.headers), the signed-in user and the session's CSRF token."""

    def __init__(self, config: Config) -> None:
        self._env = staff_environment(config)
        s = config.settings
        self._common = {"council": s.gateway.council, "duty_phone": s.gateway.duty_phone}

    async def render(
        self, request: web.Request, template: str, status: int, user: User | None, **context: object
    ) -> web.Response:
        body = self._env.get_template(f"staff/{template}").render(
            **self._common,
            cspNonce=new_nonce(request),
            user=user,
            csrf_field=CSRF_FIELD,
            csrf_token=await csrf_token(request),
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
