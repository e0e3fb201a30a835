"""Issue 14 (memory): what `serve` imports is what every instance holds for its life. Modules only
some configurations use are imported where they are used: a gateway without SMS never loads
twilio's REST client (with requests and urllib3, about 5 MiB)."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("twilio.rest", "twilio.twiml", "requests", "urllib3", "playwright")


def test_the_serve_command_loads_no_sms_client_or_browser() -> None:
    # A fresh interpreter: this test process has imported everything the suite uses.
    code = f"import sys, gateway.cli.main, gateway.app\nprint(','.join(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
