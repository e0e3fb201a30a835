"""Checks for the shipped systemd unit, systemd/referral-gateway.service.

Two layers:

* a static review of the hardening directives (parsed with a tiny systemd-style parser,
  because systemd allows repeated keys and empty assignments that reset lists);
* ``systemd-analyze verify`` on a temporary copy whose install paths point at this checkout,
  failing on any non-zero exit or any warning about the unit (misspelt keys and unparsable
  values only produce warnings and exit 0, so the exit code alone proves little).

When ``systemd-analyze`` is missing the verify tests are skipped, except under ``CI=true``
where they fail: CI must really run them.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

UNIT_NAME = "referral-gateway.service"
UNIT_PATH = Path(__file__).resolve().parent.parent / "systemd" / UNIT_NAME
INSTALL_ROOT = "/opt/referral-gateway"
SERVICE_USER = "referral-gateway"

_TRUE = {"yes", "true", "on", "1"}

Unit = dict[str, list[tuple[str, str]]]


# --------------------------------------------------------------------------- parsing


def parse_unit(text: str) -> Unit:
    """Parse a unit file into {section: [(key, value), ...]}, keeping repeated keys in order."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):  # systemd line continuation
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        assert "=" in line, f"not a key=value line: {raw!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def last(unit: Unit, section: str, key: str) -> str | None:
    found = values(unit, section, key)
    return found[-1] if found else None


def list_setting(unit: Unit, section: str, key: str) -> list[str]:
    """Effective space-separated list setting: items accumulate, an empty assignment resets."""
    items: list[str] = []
    for value in values(unit, section, key):
        if value == "":
            items = []
        else:
            items.extend(value.split())
    return items


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT_PATH.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- static review


def test_runs_as_unprivileged_user(unit: Unit) -> None:
    user = last(unit, "Service", "User")
    group = last(unit, "Service", "Group")
    assert user == SERVICE_USER
    assert group == SERVICE_USER
    assert user not in {"root", "0"} and group not in {"root", "0"}
    assert last(unit, "Service", "DynamicUser") in {None, "no", "false", "off", "0"}


def test_execstart_runs_serve_from_the_venv(unit: Unit) -> None:
    execs = values(unit, "Service", "ExecStart")
    assert len(execs) == 1, execs
    argv = shlex.split(execs[0].lstrip("-@:+!"))
    assert argv[0] == f"{INSTALL_ROOT}/.venv/bin/referral-gateway"
    assert argv[1] == "serve"
    assert argv[2:] == ["--config", f"{INSTALL_ROOT}/config/gateway.toml"]
    assert last(unit, "Service", "WorkingDirectory") == INSTALL_ROOT
    assert last(unit, "Service", "Type") == "simple"


def test_filesystem_is_read_only_except_var_and_keys(unit: Unit) -> None:
    assert last(unit, "Service", "ProtectSystem") == "strict"
    writable = {p.lstrip("-+") for p in list_setting(unit, "Service", "ReadWritePaths")}
    assert writable == {f"{INSTALL_ROOT}/var", f"{INSTALL_ROOT}/keys"}
    assert last(unit, "Service", "ProtectHome") in _TRUE
    assert last(unit, "Service", "PrivateTmp") in _TRUE
    assert last(unit, "Service", "UMask") == "0077"


def test_only_net_bind_capability(unit: Unit) -> None:
    assert last(unit, "Service", "NoNewPrivileges") in _TRUE
    bounding = list_setting(unit, "Service", "CapabilityBoundingSet")
    assert bounding == ["CAP_NET_BIND_SERVICE"]  # no "~" inversion, nothing else
    ambient = list_setting(unit, "Service", "AmbientCapabilities")
    assert set(ambient) <= set(bounding)
    assert "CAP_NET_BIND_SERVICE" in ambient


def test_restart_policy(unit: Unit) -> None:
    assert last(unit, "Service", "Restart") == "on-failure"
    assert last(unit, "Service", "RestartSec") is not None
    assert last(unit, "Unit", "StartLimitBurst") is not None
    assert last(unit, "Unit", "StartLimitIntervalSec") is not None
    assert last(unit, "Service", "KillSignal") == "SIGTERM"
    assert last(unit, "Service", "TimeoutStopSec") is not None
    assert "PYTHONUNBUFFERED=1" in list_setting(unit, "Service", "Environment")
    assert last(unit, "Install", "WantedBy") == "multi-user.target"


def test_open_files_limit_leaves_room_above_the_smtp_cap(unit: Unit) -> None:
    """At systemd's default soft limit (1,024) idle connections took every descriptor and SMTP and
    HTTP stopped answering: the unit must set LimitNOFILE= well above the SMTP session cap."""
    from gateway.config.sections import SmtpSection
    from gateway.intake.smtp import FD_HEADROOM

    value = last(unit, "Service", "LimitNOFILE")
    assert value is not None, "LimitNOFILE= is not set (systemd's default soft limit is 1024)"
    soft, _, hard = value.partition(":")
    limits = [int(soft), int(hard or soft)]  # "N" sets both; "soft:hard" each
    cap = SmtpSection.model_fields["max_sessions"].default
    assert all(limit >= 4 * (cap + FD_HEADROOM) for limit in limits), value
    assert limits[0] == limits[1]  # no soft limit left low for the gateway to raise


@pytest.mark.parametrize(
    "key",
    [
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictSUIDSGID",
        "RestrictRealtime",
        "RestrictNamespaces",
        "LockPersonality",
        "PrivateDevices",
    ],
)
def test_boolean_hardening(unit: Unit, key: str) -> None:
    assert last(unit, "Service", key) in _TRUE


def test_network_and_syscall_restrictions(unit: Unit) -> None:
    families = list_setting(unit, "Service", "RestrictAddressFamilies")
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert last(unit, "Service", "SystemCallArchitectures") == "native"
    assert list_setting(unit, "Service", "SystemCallFilter")[:1] == ["@system-service"]


# --------------------------------------------------------------------------- systemd-analyze verify


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in _TRUE:
        pytest.fail(f"{reason} (CI is set, so this must not be skipped)")
    pytest.skip(reason)


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        _skip_or_fail("systemd-analyze is not installed")
        raise AssertionError("unreachable")
    return exe


def _systemd_version(exe: str) -> int:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, f"cannot parse systemd-analyze --version: {out!r}"
    return int(match.group(1))


def _gateway_command() -> list[str]:
    """The real console script of this checkout, or an equivalent existing executable."""
    script = Path(sysconfig.get_path("scripts")) / "referral-gateway"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("referral-gateway")
    if found:
        return [found]
    return [sys.executable, "-m", "gateway"]


def _localise(text: str, root: Path) -> str:
    """Point the unit at this machine: real executable, temp install dirs, an existing user.

    Line-by-line so line numbers in systemd's warnings match the shipped file.
    """
    for sub in ("var", "keys", "config"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    try:
        pwd.getpwnam(SERVICE_USER)
        user = group = None
    except KeyError:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key == "ExecStart":
            argv = shlex.split(value.lstrip("-@:+!"))
            args = [a.replace(INSTALL_ROOT, str(root)) for a in argv[1:]]
            line = "ExecStart=" + shlex.join(_gateway_command() + args)
        elif sep and key == "User" and user:
            line = f"User={user}"
        elif sep and key == "Group" and group:
            line = f"Group={group}"
        elif sep and not line.lstrip().startswith(("#", ";")):
            line = line.replace(INSTALL_ROOT, str(root))
        out.append(line)
    return "\n".join(out) + "\n"


def _verify(text: str, tmp_path: Path) -> tuple[int, list[str], str]:
    """Run systemd-analyze verify on a localised copy of ``text``.

    Returns (exit code, output lines about our unit, full output with the temp path mapped back).
    """
    exe = _systemd_analyze()
    copy = tmp_path / "unit" / UNIT_NAME  # the file name is the unit name: keep it
    copy.parent.mkdir()
    copy.write_text(_localise(text, tmp_path / "root"), encoding="utf-8")
    cmd = [exe, "verify", "--man=no"]
    if _systemd_version(exe) >= 250:
        # Only our unit decides the exit code, not unrelated broken units on the host.
        cmd.append("--recursive-errors=no")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C"}
    proc = subprocess.run([*cmd, str(copy)], capture_output=True, text=True, timeout=30, env=env)
    output = (proc.stderr + proc.stdout).replace(str(copy), str(UNIT_PATH))
    about_unit = [ln for ln in output.splitlines() if str(UNIT_PATH) in ln or UNIT_NAME in ln]
    return proc.returncode, about_unit, output


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    rc, about_unit, output = _verify(UNIT_PATH.read_text(encoding="utf-8"), tmp_path)
    assert rc == 0 and not about_unit, f"systemd-analyze verify (exit {rc}) complained:\n{output}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ProtectSystem=strict", "ProtectSytem=strict"),  # misspelt key: warning only, exit 0
        ("Restart=on-failure", "Restart=on-falure"),  # bad value: warning only, exit 0
        ("ExecStart=", "ExecStartt="),  # no ExecStart at all: hard error
    ],
)
def test_systemd_analyze_verify_catches_breakage(tmp_path: Path, old: str, new: str) -> None:
    """Canary: the verify check above must notice a broken unit on this systemd version."""
    text = UNIT_PATH.read_text(encoding="utf-8")
    assert old in text
    rc, about_unit, output = _verify(text.replace(old, new, 1), tmp_path)
    assert rc != 0 or about_unit, f"breaking {old!r} -> {new!r} went unnoticed:\n{output}"
