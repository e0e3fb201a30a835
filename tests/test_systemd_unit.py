"""Checks for the shipped systemd units: systemd/referral-gateway.service and its template for
several instances on one host, systemd/referral-gateway@.service (every check runs on both).

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

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT_NAME = "referral-gateway.service"
UNIT_PATH = SYSTEMD_DIR / UNIT_NAME
TEMPLATE_NAME = "referral-gateway@.service"
TEMPLATE_PATH = SYSTEMD_DIR / TEMPLATE_NAME
UNIT_PATHS = [UNIT_PATH, TEMPLATE_PATH]
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


@pytest.fixture(scope="module", params=UNIT_PATHS, ids=lambda p: p.name)
def unit_path(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


@pytest.fixture(scope="module")
def unit(unit_path: Path) -> Unit:
    return parse_unit(unit_path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- static review


def test_runs_as_unprivileged_user(unit: Unit) -> None:
    user = last(unit, "Service", "User")
    group = last(unit, "Service", "Group")
    assert user == SERVICE_USER
    assert group == SERVICE_USER
    assert user not in {"root", "0"} and group not in {"root", "0"}
    assert last(unit, "Service", "DynamicUser") in {None, "no", "false", "off", "0"}


def test_execstart_runs_serve_from_the_venv(unit: Unit, unit_path: Path) -> None:
    execs = values(unit, "Service", "ExecStart")
    assert len(execs) == 1, execs
    argv = shlex.split(execs[0].lstrip("-@:+!"))
    assert argv[0] == f"{INSTALL_ROOT}/.venv/bin/referral-gateway"
    assert argv[1] == "serve"
    # The template's instance reads its own file, still in config/: the gateway's home is the
    # folder above the config's, so keys/ and var/ are the ones every instance shares.
    config = "%i.toml" if unit_path == TEMPLATE_PATH else "gateway.toml"
    assert argv[2:] == ["--config", f"{INSTALL_ROOT}/config/{config}"]
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


# The template is verified as one instance of it: systemd loads referral-gateway@north.service
# from the template file beside it, with %i set to "north", as `systemctl start` would.
INSTANCE_NAME = "referral-gateway@north.service"


def _verify(text: str, tmp_path: Path, shipped: Path) -> tuple[int, list[str], str]:
    """Run systemd-analyze verify on a localised copy of ``text`` (the unit file ``shipped``).

    Returns (exit code, output lines about our unit, full output with the temp path mapped back).
    """
    exe = _systemd_analyze()
    copy = tmp_path / "unit" / shipped.name  # the file name is the unit name: keep it
    copy.parent.mkdir()
    copy.write_text(_localise(text, tmp_path / "root"), encoding="utf-8")
    target = copy.with_name(INSTANCE_NAME) if shipped == TEMPLATE_PATH else copy
    cmd = [exe, "verify", "--man=no"]
    if _systemd_version(exe) >= 250:
        # Only our unit decides the exit code, not unrelated broken units on the host.
        cmd.append("--recursive-errors=no")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C"}
    proc = subprocess.run([*cmd, str(target)], capture_output=True, text=True, timeout=30, env=env)
    output = (proc.stderr + proc.stdout).replace(str(copy), str(shipped))
    names = (str(shipped), shipped.name, target.name)
    about_unit = [ln for ln in output.splitlines() if any(name in ln for name in names)]
    return proc.returncode, about_unit, output


@pytest.mark.parametrize("shipped", UNIT_PATHS, ids=lambda p: p.name)
def test_systemd_analyze_verify(tmp_path: Path, shipped: Path) -> None:
    rc, about_unit, output = _verify(shipped.read_text(encoding="utf-8"), tmp_path, shipped)
    assert rc == 0 and not about_unit, f"systemd-analyze verify (exit {rc}) complained:\n{output}"


@pytest.mark.parametrize("shipped", UNIT_PATHS, ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ProtectSystem=strict", "ProtectSytem=strict"),  # misspelt key: warning only, exit 0
        ("Restart=on-failure", "Restart=on-falure"),  # bad value: warning only, exit 0
        ("ExecStart=", "ExecStartt="),  # no ExecStart at all: hard error
    ],
)
def test_systemd_analyze_verify_catches_breakage(tmp_path: Path, shipped: Path, old: str, new: str) -> None:
    """Canary: the verify check above must notice a broken unit on this systemd version."""
    text = shipped.read_text(encoding="utf-8")
    assert old in text
    rc, about_unit, output = _verify(text.replace(old, new, 1), tmp_path, shipped)
    assert rc != 0 or about_unit, f"breaking {old!r} -> {new!r} went unnoticed:\n{output}"


# --------------------------------------------------------------------------- the template


def _without_instance(unit: Unit) -> Unit:
    """The template with its two instance-specific values put back as the single unit has them."""
    out: Unit = {}
    for section, items in unit.items():
        out[section] = [
            (
                key,
                value.replace("instance %i ", "", 1)
                if key == "Description"
                else value.replace("/config/%i.toml", "/config/gateway.toml")
                if key == "ExecStart"
                else value,
            )
            for key, value in items
        ]
    return out


def test_template_has_the_same_settings_as_the_single_unit() -> None:
    """Hardening added to one unit and forgotten in the other would leave some instances weaker:
    apart from the description and the config file, the two must be identical, line for line."""
    single = parse_unit(UNIT_PATH.read_text(encoding="utf-8"))
    template = parse_unit(TEMPLATE_PATH.read_text(encoding="utf-8"))
    assert _without_instance(template) == single
    assert template != single  # the substitutions above did change something


def test_template_names_the_instance_only_in_its_description_and_config() -> None:
    """%i picks the instance's own config file (its own ports); everything else is shared, so the
    instance name must not turn up in, say, ReadWritePaths (keys/ must be the same for all)."""
    template = parse_unit(TEMPLATE_PATH.read_text(encoding="utf-8"))
    with_instance = [(section, key) for section, items in template.items() for key, value in items if "%i" in value]
    assert with_instance == [("Unit", "Description"), ("Service", "ExecStart")]
    text = "\n".join(v for items in template.values() for _, v in items)
    assert "%I" not in text  # the unescaped name could hold a "/" and leave config/
    argv = shlex.split(values(template, "Service", "ExecStart")[0])
    assert argv[-2:] == ["--config", f"{INSTALL_ROOT}/config/%i.toml"]


def test_instances_in_config_share_the_home_keys_and_data(tmp_path: Path) -> None:
    """The template keeps each instance's file in config/ because the gateway's home is the folder
    above the config's: two instances there load one keys/ and var/, and differ only in ports."""
    from gateway import config as config_mod
    from tests.conftest import write_config

    home = tmp_path / "opt"
    base = write_config(home)
    loaded = {}
    for name, smtp_port, http_port in (("north", 8025, 8080), ("south", 8026, 8081)):
        text = base.read_text(encoding="utf-8")
        text = text.replace("port = 0", f"port = {smtp_port}", 1).replace("port = 0", f"port = {http_port}", 1)
        path = home / "config" / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        loaded[name] = config_mod.load(path)
    north, south = loaded["north"], loaded["south"]
    assert north.home == south.home == home.resolve()
    assert north.keys_dir == south.keys_dir == home.resolve() / "keys"
    assert north.data_dir == south.data_dir
    assert (north.settings.smtp.port, north.settings.http.port) == (8025, 8080)
    assert (south.settings.smtp.port, south.settings.http.port) == (8026, 8081)
