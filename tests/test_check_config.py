"""`referral-gateway check-config`: the shipped config passes; a broken one fails with exit code 2
and, for every problem, an error naming the file, the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "gateway.toml"


def shipped_text() -> str:
    # The copy lives in a temp home, so point it at the checkout's templates (check-config
    # checks them too); everything else is exactly as shipped.
    text = SHIPPED.read_text()
    assert 'templates_dir = "templates"' in text
    return text.replace('templates_dir = "templates"', f'templates_dir = "{ROOT / "templates"}"')


IMMEDIATE = 'immediate = "15m"                     # clock time'  # the [deadlines] one


def edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the shipped config changed: {old!r} is not there exactly once"
    return text.replace(old, new)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "gateway.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def errors(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no error was printed"
    assert all(line.startswith("error: ") for line in lines), err
    return lines


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_config_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, SHIPPED)
    assert code == 0
    assert err == ""
    first = out.splitlines()[0]
    assert first.startswith(f"{SHIPPED}: OK: ")
    assert "3 teams, 5 routes" in first
    assert "default route 'default-triage' to team 'triage'" in first
    assert "outbound mail to the maildir" in first


def test_a_copy_of_the_shipped_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, shipped_text())
    code, out, err = check(capsys, path)
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: OK: ")
    assert str(tmp_path / "var" / "mail") in out  # relative paths are relative to the home


def test_console_entry_python_dash_m_gateway(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(SHIPPED)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"{SHIPPED}: OK: 3 teams, 5 routes" in result.stdout


def test_console_entry_reports_a_broken_config_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, edited(shipped_text(), IMMEDIATE, IMMEDIATE.replace("15m", "15 mins")))
    script = Path(sys.executable).parent / "referral-gateway"
    result = subprocess.run(
        [str(script), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}: deadlines.immediate:" in result.stderr and "Fix:" in result.stderr


def test_default_config_path_is_config_gateway_toml_in_the_current_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, shipped_text())
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith("config/gateway.toml: OK: ")


LAST_ROUTE = '[[routes]]\nname = "default-triage"\ndefault = true\nteam = "triage"'
FIRST_ROUTE = '[[routes]]\nname = "sexual-abuse-to-mash"'
EARLY_DEFAULT = '[[routes]]\nname = "catch-all"\ndefault = true\nteam = "triage"\n\n'

# name -> (edit of the shipped text, the key the error must name, words the message must hold,
#          words the fix must hold)
BROKEN: dict[str, tuple[Callable[[str], str], str, tuple[str, ...], tuple[str, ...]]] = {
    "unknown team in a route": (
        lambda t: edited(t, 'urgency = ["immediate"]\nteam = "mash"', 'urgency = ["immediate"]\nteam = "mahs"'),
        "routes[1].team",
        ("unknown team 'mahs'",),
        ("mash", "triage", "edt"),
    ),
    "no default route": (
        lambda t: edited(t, 'default = true\nteam = "triage"', 'team = "triage"'),
        "routes",
        ("no default route",),
        ("default = true",),
    ),
    "default route not last": (
        lambda t: edited(
            edited(t, FIRST_ROUTE, EARLY_DEFAULT + FIRST_ROUTE),
            LAST_ROUTE,
            '[[routes]]\nname = "default-triage"\nteam = "triage"',
        ),
        "routes[0].default",
        ("last route", "can never match", "sexual-abuse-to-mash", "immediate-out-of-area"),
        ("move the default route to the end",),
    ),
    "two default routes": (
        lambda t: t + '\n[[routes]]\nname = "second-default"\ndefault = true\nteam = "mash"\n',
        "routes[4].default",
        ("only default", "second-default"),
        ("keep just one",),
    ),
    "duplicate team id": (
        lambda t: edited(
            t,
            "# Routes: first match wins.",
            '[[teams]]\nid = "mash"\nname = "Another MASH"\nemail = "mash2@demo-council.example"\n'
            'phone = "020 7946 0004"\n\n# Routes: first match wins.',
        ),
        "teams[3].id",
        ("'mash' is defined twice",),
        ("unique id",),
    ),
    "duplicate route name": (
        lambda t: edited(t, 'name = "borough-postcodes"', 'name = "immediate-in-borough"'),
        "routes[2].name",
        ("'immediate-in-borough' is used twice",),
        ("unique name",),
    ),
    "bad duration": (
        lambda t: edited(t, IMMEDIATE, IMMEDIATE.replace("15m", "15 mins")),
        "deadlines.immediate",
        ("'15 mins' is not a deadline",),
        ('"15m"', "4 working hours", "end of next working day"),
    ),
    "bad team email": (
        lambda t: edited(t, 'email = "edt@demo-council.example"', 'email = "edt at demo-council"'),
        "teams[2].email",
        ("email address",),
        ("duty@council.example",),
    ),
    "misspelt key": (
        lambda t: edited(t, 'urgency = ["immediate"]\nteam = "edt"', 'urgncy = ["immediate"]\nteam = "edt"'),
        "routes[3].urgncy",
        ("not permitted",),
        ("correct its spelling",),
    ),
    "missing required key": (
        lambda t: edited(t, 'referral_addresses = ["referrals@demo-council.example"]\n', ""),
        "smtp.referral_addresses",
        ("required",),
        ("add this key",),
    ),
    "invalid TOML": (
        lambda t: edited(t, "[ack]", "[ack"),
        "(syntax)",
        ("not valid TOML", "line"),
        ("correct the TOML syntax",),
    ),
    "invalid postcode pattern": (
        lambda t: edited(t, 'postcode = ["W1", "WC1", "WC2"]\nurgency', 'postcode = ["W1", "WC1", "NW1 2AB"]\nurgency'),
        "routes[1].postcode",
        ("'NW1 2AB' is not a postcode area",),
        ("district",),
    ),
    "hand-over at close on a team that never closes": (
        lambda t: edited(
            t,
            "around the clock.\n",
            'around the clock.\nhand_over_at_close = ["urgent"]\n',
        ),
        "teams[2].hand_over_at_close",
        ("team 'edt' has no schedule", "nothing is handed over"),
        ("give the team a schedule",),
    ),
    "hand-over at close with no out-of-hours team to take it": (
        lambda t: edited(
            t,
            'local_authority = ["E09000999"]\nteam = "mash"\nout_of_hours = "edt"',
            'local_authority = ["E09000999"]\nteam = "mash"',
        ),
        "teams[0].hand_over_at_close",
        ("route 'borough-postcodes' sends to 'mash' with no out_of_hours team",),
        ("give route 'borough-postcodes' an out_of_hours team",),
    ),
    "default route with conditions": (
        lambda t: edited(t, LAST_ROUTE, LAST_ROUTE + '\nurgency = ["standard"]'),
        "routes[4]",
        ("default route matches everything",),
        ("use no conditions on it",),
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_config_names_file_key_and_fix(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit, key, message_words, fix_words = BROKEN[case]
    path = write(tmp_path, edit(shipped_text()))
    code, out, err = check(capsys, path)
    assert code == 2
    assert "OK" not in out
    lines = errors(err)
    mine = [line for line in lines if line.startswith(f"error: {path}: {key}: ")]
    assert mine, f"no error names {key}:\n{err}"
    message, sep, fix = mine[0].removeprefix(f"error: {path}: {key}: ").partition(". Fix: ")
    assert sep, f"no 'Fix:' in {mine[0]!r}"
    for words in message_words:
        assert words in message, mine[0]
    for words in fix_words:
        assert words in fix, mine[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config" / "gateway.toml"
    code, _, err = check(capsys, path)
    assert code == 2
    (line,) = errors(err)
    assert line.startswith(f"error: {path}: (file): ")
    assert "does not exist" in line
    assert "Fix: pass --config PATH" in line


def test_templates_dir_without_templates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SHIPPED.read_text())  # templates = <home>/templates: not in a temp home
    code, _, err = check(capsys, path)
    assert code == 2
    lines = errors(err)
    assert any(f"{path}: paths.templates_dir: " in line and "email/alert.txt" in line for line in lines)
    assert all("Fix: point paths.templates_dir at" in line for line in lines)


def test_several_field_errors_are_all_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = shipped_text()
    text = edited(text, IMMEDIATE, IMMEDIATE.replace("15m", "15 mins"))
    text = edited(text, 'email = "edt@demo-council.example"', 'email = "edt at demo-council"')
    text = edited(text, 'urgency = ["immediate"]\nteam = "edt"', 'urgncy = ["immediate"]\nteam = "edt"')
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 2
    lines = errors(err)
    for key in ("deadlines.immediate", "teams[2].email", "routes[3].urgncy"):
        assert sum(f": {key}: " in line for line in lines) == 1, err
    assert all("Fix: " in line for line in lines)


def test_several_route_errors_are_all_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = shipped_text()
    text = edited(text, 'urgency = ["immediate"]\nteam = "mash"', 'urgency = ["immediate"]\nteam = "mahs"')
    text = edited(text, 'name = "borough-postcodes"', 'name = "immediate-in-borough"')
    text = edited(text, 'default = true\nteam = "triage"', 'team = "triage"')
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 2
    lines = errors(err)
    for key in ("routes[1].team", "routes[2].name", "routes"):
        assert sum(f": {key}: " in line for line in lines) == 1, err
    assert len(lines) == 3


def test_a_field_error_and_a_route_error_are_reported_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An administrator should not have to fix one mistake to be told about the next.
    text = shipped_text()
    text = edited(text, IMMEDIATE, IMMEDIATE.replace("15m", "15 mins"))
    text = edited(text, 'urgency = ["immediate"]\nteam = "mash"', 'urgency = ["immediate"]\nteam = "mahs"')
    code, _, err = check(capsys, write(tmp_path, text))
    assert code == 2
    lines = errors(err)
    assert any(": deadlines.immediate: " in line for line in lines), err
    assert any(": routes[1].team: unknown team 'mahs'" in line for line in lines), err


CHRISTMAS = ["--from", "2026-12-01T00:00", "--days", "28"]  # 28 days over Christmas and Boxing Day


def test_the_shipped_config_has_no_deadline_longer_than_24_clock_hours(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(SHIPPED), *CHRISTMAS]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("warning:")] == []


def test_a_working_time_deadline_over_christmas_without_a_hand_over_is_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = edited(shipped_text(), 'hand_over_at_close = ["immediate", "urgent"]\n', "")
    path = write(tmp_path, text)
    assert main(["check-config", "--config", str(path), *CHRISTMAS]) == 0  # a warning, not an error
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    # 16:55 on Thursday 24 December: 5 working minutes that day, then Christmas Day, the weekend
    # and Boxing Day (observed Monday 28th) are closed; the rest runs out at 12:55 on the 29th.
    assert warnings == [
        "warning: urgent on team mash: a referral at 16:55 on 24 Dec is due 29 Dec 12:55, 116 clock hours "
        "(over 24); add a hand-over at close (hand_over_at_close on the team) or give it a shorter deadline"
    ]
    # Without the setting nothing is checked.
    write(tmp_path, text.replace("warn_clock_hours = 24 ", "# warn_clock_hours = 24 "))
    assert main(["check-config", "--config", str(path), *CHRISTMAS]) == 0
    assert "warning:" not in capsys.readouterr().out
