"""Config for who is on duty: each mistake an administrator can make in teams, rotas, schedules,
chains and routes is refused with the file, the key and the fix; `check-config` proves coverage
for the next 28 days and warns when the bank holiday data runs out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.test_check_config import SHIPPED, edited, errors, shipped_text, write

MASH_OVERRIDE = 'members = ["chloe"]\nnote = "Ben on leave; Chloe swaps in"'
EDT_ROUTE = 'name = "immediate-out-of-area"\nurgency = ["immediate"]\nteam = "edt"'

BROKEN: dict[str, tuple[Callable[[str], str], str, tuple[str, ...], tuple[str, ...]]] = {
    "unknown schedule": (
        lambda t: edited(
            t, 'phone = "020 7946 0001"\nschedule = "office"', 'phone = "020 7946 0001"\nschedule = "ofice"'
        ),
        "teams[0].schedule",
        ("unknown schedule 'ofice'",),
        ("use one of: office",),
    ),
    "rota names someone not in the team": (
        lambda t: edited(t, 'members = ["asha", "ben"]', 'members = ["asha", "bne"]'),
        "teams[0].rota.shifts[0].members",
        ("'bne' is not a member of mash",),
        ("asha, ben, chloe, dev",),
    ),
    "overlapping overrides": (
        lambda t: edited(
            t,
            MASH_OVERRIDE,
            MASH_OVERRIDE + '\n[[teams.rota.overrides]]\nfrom = "2026-12-24T12:00"\nto = "2026-12-24T20:00"\n'
            'members = ["asha"]',
        ),
        "teams[0].rota.overrides[1]",
        ("overlaps overrides[0]",),
        ("end before the next starts",),
    ),
    "override that ends before it starts": (
        lambda t: edited(t, 'to = "2026-12-24T17:00"', 'to = "2026-12-24T08:00"'),
        "teams[0].rota.overrides[0]",
        ("must end after it starts",),
        ("'to' later than 'from'",),
    ),
    "unknown escalation chain": (
        lambda t: edited(
            t,
            'deadline.\nescalation = { immediate = "immediate", urgent = "urgent", standard = "standard" }',
            'deadline.\nescalation = { immediate = "immediate", urgent = "urgent", standard = "standrad" }',
        ),
        "teams[1].escalation",
        ("unknown escalation chain 'standrad'",),
        ("immediate, urgent, standard",),
    ),
    "until_acknowledged not on the last step": (
        lambda t: edited(t, 'wait = "10m"', 'wait = "10m"\nuntil_acknowledged = true'),
        "escalations[0]",
        ("step 1 repeats until acknowledged",),
        ("last step only",),
    ),
    "unknown notify target": (
        lambda t: edited(t, 'notify = ["managers"]', 'notify = ["bosses"]'),
        "escalations[1].steps[1].notify[0]",
        ("'on-duty'", "'coordinators'"),
        ("correct the value",),
    ),
    "bad wait": (
        lambda t: edited(t, 'wait = "2h"', 'wait = "2 hrs"'),
        "escalations[1].steps[2].wait",
        ("'2 hrs' is not a deadline",),
        ("4 working hours",),
    ),
    "bad team deadline": (
        lambda t: edited(t, 'urgent = "4 working hours"', 'urgent = "4 work hours"'),
        "teams[0].deadlines.urgent",
        ("'4 work hours' is not a deadline",),
        ("end of next working day",),
    ),
    "bad opening hours": (
        lambda t: edited(t, 'friday = "09:00-16:30"', 'friday = "16:30-09:00"'),
        "schedules[0].hours.friday",
        ("ends before it starts",),
        ("'24:00' for midnight",),
    ),
    "bad nation": (
        lambda t: edited(t, 'nation = "england"', 'nation = "cornwall"'),
        "schedules[0].nation",
        ("'england'", "'northern-ireland'"),
        ("correct the value",),
    ),
    "bad mobile": (
        lambda t: edited(t, 'mobile = "07700 900101"', 'mobile = "call me"'),
        "teams[0].members[0].mobile",
        ("'call me' is not a phone number",),
        ("'07700 900123'",),
    ),
    "unknown out-of-hours team": (
        lambda t: edited(t, 'team = "triage"\nout_of_hours = "edt"', 'team = "triage"\nout_of_hours = "etd"'),
        "routes[4].out_of_hours",
        ("unknown team 'etd'",),
        ("mash, triage, edt",),
    ),
    "out-of-hours team that could never be used": (
        lambda t: edited(t, EDT_ROUTE, EDT_ROUTE + '\nout_of_hours = "mash"'),
        "routes[3].out_of_hours",
        ("team 'edt' has no schedule", "'mash' would never be used"),
        ("give team 'edt' a schedule, or remove out_of_hours",),
    ),
    "unknown local authority": (
        lambda t: edited(t, 'local_authority = ["E09000999"]', 'local_authority = ["E09000998"]'),
        "routes[2].local_authority",
        ("unknown local authority 'E09000998'",),
        ("[[local_authorities]]",),
    ),
    "route shadowed by an earlier one": (
        lambda t: edited(t, 'name = "borough-postcodes"', 'name = "borough-postcodes"\ncategory = ["sexual"]'),
        "routes[2]",
        ("route 'borough-postcodes' can never match: 'sexual-abuse-to-mash' before it",),
        ("move 'borough-postcodes' above 'sexual-abuse-to-mash'",),
    ),
    "bad age band": (
        lambda t: edited(t, 'name = "sexual-abuse-to-mash"', 'name = "sexual-abuse-to-mash"\nage = ["teenager"]'),
        "routes[0].age[0]",
        ("'teenager' is not an age band",),
        ("'unborn'", "'0-4'"),
    ),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_each_duty_mistake_names_file_key_and_fix(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, key, message_parts, fix_parts = BROKEN[case]
    path = write(tmp_path, edit(shipped_text()))
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 2, out
    lines = errors(err)
    mine = [line for line in lines if line.startswith(f"error: {path}: {key}: ")]
    assert mine, f"no error names {key}:\n{err}"
    message, _, fix = mine[0].partition(". Fix: ")
    for part in message_parts:
        assert part in message, mine[0]
    for part in fix_parts:
        assert part in fix, mine[0]


def test_shipped_config_covers_every_route_for_28_days(capsys: pytest.CaptureFixture[str]) -> None:
    # Across Christmas and New Year: the bank holidays close the office and the EDT covers them.
    code = main(["check-config", "--from", "2026-12-14T00:00", "--config", str(SHIPPED)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "coverage: every route has someone reachable on duty for the 28 days from Monday 14 December 2026" in out
    assert "gap:" not in out and "warning:" not in out


def test_a_gap_is_printed_with_route_day_and_hours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nobody covers MASH on Christmas Eve, and the triage rota starts late one Monday.
    text = edited(shipped_text(), MASH_OVERRIDE, 'members = []\nnote = "everyone away"')
    text = edited(
        text,
        'members = ["erin"]',
        'members = ["erin"]\n[[teams.rota.overrides]]\nfrom = "2026-12-07T09:00"\n'
        'to = "2026-12-07T10:30"\nmembers = []',
    )
    path = write(tmp_path, text)
    code = main(["check-config", "--from", "2026-12-01", "--config", str(path)])
    out, _ = capsys.readouterr()
    assert code == 1
    gaps = [line for line in out.splitlines() if line.startswith("gap: ")]
    assert gaps == [
        "gap: route 'sexual-abuse-to-mash': nobody reachable on duty in team 'mash' on Thu 24 Dec 2026, 09:00-17:00",
        "gap: route 'immediate-in-borough': nobody reachable on duty in team 'mash' on Thu 24 Dec 2026, 09:00-17:00",
        "gap: route 'borough-postcodes': nobody reachable on duty in team 'mash' on Thu 24 Dec 2026, 09:00-17:00",
        "gap: route 'default-triage': nobody reachable on duty in team 'triage' on Mon 07 Dec 2026, 09:00-10:30",
    ]
    assert "coverage: 4 gap(s) in the 28 days from Tuesday 01 December 2026, 00:00 GMT." in out
    assert "add rota shifts or overrides" in out


def test_a_gap_over_a_weekend_is_printed_day_by_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nobody on the EDT's Saturday night shift: one gap, printed for each day it touches.
    text = edited(
        shipped_text(),
        'members = ["hana"]',
        'members = ["hana"]\n[[teams.rota.overrides]]\nfrom = "2026-12-05T20:00"\n'
        'to = "2026-12-06T08:00"\nmembers = []',
    )
    path = write(tmp_path, text)
    code = main(["check-config", "--from", "2026-12-01", "--days", "7", "--config", str(path)])
    out, _ = capsys.readouterr()
    assert code == 1
    edt = sorted({line.split(": ", 2)[2] for line in out.splitlines() if line.startswith("gap: ")})
    assert edt == [
        "nobody reachable on duty in team 'edt' on Sat 05 Dec 2026, 20:00-24:00",
        "nobody reachable on duty in team 'edt' on Sun 06 Dec 2026, 00:00-08:00",
    ]


def test_check_config_warns_when_bank_holiday_data_runs_out(capsys: pytest.CaptureFixture[str]) -> None:
    # The holidays package knows the rules up to its end year; within 120 days of that, say so.
    code = main(["check-config", "--from", "2100-10-01", "--days", "1", "--config", str(SHIPPED)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "warning: bank holiday data for england ends on 2100-12-31, within 120 days" in out
    code = main(["check-config", "--from", "2100-08-01", "--days", "1", "--config", str(SHIPPED)])
    out, _ = capsys.readouterr()
    assert "warning:" not in out
