"""The coordinator-facing commands: `route --explain FILE` and `report undelivered`.

The report is built from a real store: referrals sent over real SMTP to an in-process gateway,
processed, alerted (to the maildir) and one acknowledged through its link. The CLI reads the
store with the system clock, so the gateway's clock starts two days in the past: the referrals
it received are genuinely overdue now.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.core.clock import FakeClock
from tests.conftest import make_message, referral_body, smtp_send, valid_nhs, write_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "config" / "examples"
AT = "2026-11-25T10:00:00+00:00"  # a winter morning: times are shown in GMT
RECEIVED = "received: Wednesday 25 November 2026, 10:00 GMT"
MASH_ADDRESS = "mash-duty@demo-council.example"


def explain(capsys: pytest.CaptureFixture[str], file: Path, at: str = AT) -> str:
    code = main(["route", "--explain", str(file), "--at", at, "--config", str(ROOT / "config" / "gateway.toml")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    return out


def rules(out: str) -> list[tuple[str, str, str]]:
    """(MATCH|no, route, why) for each rule line of --explain."""
    found = re.findall(r"^  (MATCH|no   )  ([a-z0-9-]+): (.*)$", out, flags=re.MULTILINE)
    return [(verdict.strip(), name, why) for verdict, name, why in found]


def filled_template(values: dict[str, str]) -> str:
    """templates/referral-email.txt with each labelled line filled in, as a referrer would."""
    lines = []
    for line in (ROOT / "templates" / "referral-email.txt").read_text().splitlines():
        label = line.removesuffix(":")
        if not line.startswith("#") and line.endswith(":") and label in values:
            line = f"{line} {values.pop(label)}"
        lines.append(line)
    assert not values, f"labels not in the template: {values}"
    return "\n".join(lines) + "\n"


# ---- route --explain ----------------------------------------------------------------------------


def test_explain_shipped_complete_example(capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(capsys, EXAMPLES / "complete-referral.json")
    assert "referral: urgency urgent, category neglect, postcode district W1A" in out
    assert "incomplete" not in out
    assert rules(out) == [
        ("no", "sexual-abuse-to-mash", "category neglect is not in sexual"),
        (
            "no",
            "immediate-in-borough",
            "postcode district W1A is in W1, WC1, WC2; urgency urgent is not in immediate",
        ),
        ("MATCH", "borough-postcodes", "local authority E09000999 is in E09000999"),
    ]
    assert ("routed to: MASH duty team (mash, mash-duty@demo-council.example) by route 'borough-postcodes'") in out
    assert RECEIVED in out
    assert "hours: in office hours for mash (schedule office)" in out
    assert "on duty now: Asha Okafor, Ben Carter" in out
    # MASH's own deadline for urgent referrals is in working time on its schedule.
    assert "acknowledge within 4 working hours: by Wednesday 25 November 2026, 14:00 GMT" in out
    assert "escalation chain 'urgent' if nobody acknowledges:" in out
    assert (
        "  step 1 at Wednesday 25 November 2026, 10:00 GMT: on-duty, mailbox by email -> Asha Okafor (email), "
        "Ben Carter (email), MASH duty team (email)"
    ) in out
    assert (
        "  step 2 at Wednesday 25 November 2026, 14:00 GMT: managers by email, sms -> "
        "Dev Malik (email), Dev Malik (sms)"
    ) in out
    # The explanation shows no personal data about the child beyond the postcode district.
    assert "Sam Sample" not in out and "W1A 1AA" not in out and "Example Street" not in out


def test_explain_shipped_incomplete_example_lists_what_is_missing_and_goes_to_triage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = explain(capsys, EXAMPLES / "incomplete-referral.json")
    listed = re.findall(r"^  - ([a-z_]+): (.+)$", out, flags=re.MULTILINE)
    fields = {field for field, _ in listed}
    assert {"referrer_organisation", "child_name", "consent_basis", "category", "parents_aware"} <= fields
    assert "Referrer organisation is missing" in out and "Consent basis is missing" in out
    assert "incomplete:" in out
    ((verdict, name, why),) = rules(out)  # no other rule is even looked at
    assert (verdict, name) == ("MATCH", "default-triage")
    assert why.startswith("incomplete referral (") and why.endswith("): goes to the default route")
    assert "routed to: Front door triage team (triage, triage@demo-council.example)" in out
    assert "by route 'default-triage'" in out
    assert "acknowledge within 15 minutes: by Wednesday 25 November 2026, 10:15 GMT" in out


def test_explain_own_incomplete_json_missing_urgency_is_treated_as_most_urgent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {
        "referrer": {"name": "Pat Example", "organisation": "Example School", "phone": "020 7946 0998"},
        "child": {"name": "Jo Testchild", "date_of_birth": "2019-06-01"},
        "concern_category": "physical",
        "parents_aware": False,
        "consent_basis": "Sharing without consent: risk of harm.",
        "details": "Synthetic test concern.",
    }
    file = tmp_path / "referral.json"
    file.write_text(json.dumps(document))
    out = explain(capsys, file)
    assert "referral: urgency not given, category physical, postcode district not given" in out
    assert "  - child_postcode: Child's postcode is missing" in out
    assert "  - urgency: Urgency is missing" in out
    assert rules(out) == [
        ("MATCH", "default-triage", "incomplete referral (child_postcode, urgency): goes to the default route")
    ]
    assert "routed to: Front door triage team" in out
    assert "acknowledge within 15 minutes: by Wednesday 25 November 2026, 10:15 GMT" in out


def test_explain_filled_in_text_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = filled_template(
        {
            "Referrer name": "Ann Example",
            "Referrer role": "Health visitor",
            "Referrer organisation": "Demo Community Health",
            "Referrer email": "ann.example@nhs.example",
            "Referrer phone": "020 7946 0999",
            "Child's name": "Sam Testchild",
            "Child's date of birth": "03/04/2021",
            "Child's NHS number": valid_nhs(),
            "Child's address": "9 Sample Road, Manchester",
            "Child's postcode": "M1 1AE",
            "Concern category": "physical",
            "Urgency": "immediate",
            "Parents/carers aware": "no",
            "Consent basis": "Sharing without consent: immediate risk.",
            "Details": "Synthetic test concern.",
        }
    )
    file = tmp_path / "referral.txt"
    file.write_text(body)
    out = explain(capsys, file)
    assert "referral: urgency immediate, category physical, postcode district M1" in out
    assert "incomplete" not in out
    assert rules(out) == [
        ("no", "sexual-abuse-to-mash", "category physical is not in sexual"),
        ("no", "immediate-in-borough", "postcode district M1 is not in W1, WC1, WC2"),
        ("no", "borough-postcodes", "local authority unknown is not in E09000999"),
        ("MATCH", "immediate-out-of-area", "urgency immediate is in immediate"),
    ]
    assert "routed to: Emergency Duty Team (edt, edt@demo-council.example) by route 'immediate-out-of-area'" in out
    assert RECEIVED in out
    assert "acknowledge within 15 minutes: by Wednesday 25 November 2026, 10:15 GMT" in out


def test_explain_eml_goes_through_every_rule_to_the_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = referral_body(postcode="LS1 4AP", category="emotional", urgency="standard")
    file = tmp_path / "referral.eml"
    file.write_bytes(make_message(body, message_id="<explain@nhs.example>").as_bytes())
    out = explain(capsys, file)
    assert "referral: urgency standard, category emotional, postcode district LS1" in out
    verdicts = rules(out)
    assert [v for v, _, _ in verdicts] == ["no", "no", "no", "no", "MATCH"]
    assert verdicts[-1] == ("MATCH", "default-triage", "default route: matches every referral")
    assert verdicts[3] == ("no", "immediate-out-of-area", "urgency standard is not in immediate")
    assert "routed to: Front door triage team (triage, triage@demo-council.example)" in out
    assert "acknowledge within 1 day: by Thursday 26 November 2026, 10:00 GMT" in out


def test_explain_eml_with_referral_json_attachment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = EmailMessage()
    msg["From"] = "Alex Example <alex.example@example.org>"
    msg["To"] = "referrals@demo-council.example"
    msg["Subject"] = "Safeguarding referral"
    msg.set_content("Please see the attached referral.\n")
    data = (EXAMPLES / "complete-referral.json").read_bytes()
    msg.add_attachment(data, maintype="application", subtype="json", filename="referral.json")
    file = tmp_path / "attached.eml"
    file.write_bytes(msg.as_bytes())
    out = explain(capsys, file)
    assert "referral: urgency urgent, category neglect, postcode district W1A" in out
    assert "by route 'borough-postcodes'" in out


def test_explain_in_summer_shows_british_summer_time(capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(capsys, EXAMPLES / "complete-referral.json", at="2026-07-01T09:00:00+00:00")
    assert "received: Wednesday 01 July 2026, 10:00 BST" in out
    assert "acknowledge within 4 working hours: by Wednesday 01 July 2026, 14:00 BST" in out


def test_explain_at_1655_on_christmas_eve_shows_the_hand_over_at_close(capsys: pytest.CaptureFixture[str]) -> None:
    out = explain(capsys, EXAMPLES / "complete-referral.json", at="2026-12-24T16:55:00+00:00")
    assert "acknowledge within 4 working hours: by Tuesday 29 December 2026, 12:55 GMT" in out
    assert (
        "hand-over at close: at Thursday 24 December 2026, 17:00 GMT to Emergency Duty Team (alerted then); "
        "acknowledge by Thursday 24 December 2026, 18:00 GMT from then, and steps due later come forward to that"
    ) in out
    # The managers' step waited for 29 December; from the hand-over it comes at the EDT's deadline.
    assert "  step 2 at Thursday 24 December 2026, 18:00 GMT: managers by email, sms" in out
    assert "  step 3 at Thursday 24 December 2026, 19:00 GMT: coordinators by email, sms" in out


def test_explain_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.json"
    code = main(["route", "--explain", str(missing), "--config", str(ROOT / "config" / "gateway.toml")])
    _, err = capsys.readouterr()
    assert code == 2
    assert f"error: {missing}: no such file" in err


# ---- report undelivered --------------------------------------------------------------------------


async def acknowledge(gw: Gateway, home: Path, reference: str) -> None:
    box = home / "var" / "mail" / MASH_ADDRESS / "new"
    alerts = [
        m
        for m in (message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(box.iterdir()))
        if m["X-Referral-Reference"] == reference
    ]
    assert len(alerts) == 1
    match = re.search(r"(http://\S+/ack/\S+)", alerts[0].get_body(preferencelist=("plain",)).get_content())
    assert match
    link = match.group(1).replace("127.0.0.1:8080", f"127.0.0.1:{gw.http_port}")
    async with aiohttp.ClientSession() as http, http.post(link, data={"name": "Dee Worker"}) as response:
        assert response.status == 200
        assert "acknowledged by" in await response.text()


async def build_store(home: Path) -> tuple[Path, dict[str, str]]:
    """Three referrals received 2 days 30 minutes ago: urgent (MASH), incomplete (triage) and one
    acknowledged. Returns the config path and the references by name."""
    path = write_config(home, all_hours=True)
    clock = FakeClock(datetime.now(UTC) - timedelta(days=2, minutes=30))
    gw = Gateway(config_mod.load(path), clock=clock, workers=False)
    await gw.start()
    try:
        refs: dict[str, str] = {}
        bodies = {
            "late": referral_body(urgency="urgent"),
            "incomplete": "Referrer name: Ann Example\nChild name: Sam Testchild\nDetails:\nWorried.\n",
            "acknowledged": referral_body(urgency="urgent", postcode="NW1 4RY"),
        }
        for name, body in bodies.items():
            code, text = await smtp_send(gw.smtp_port, make_message(body, message_id=f"<{name}@nhs.example>"))
            assert code == 250
            refs[name] = text.split()[-1]
        assert await gw.process_all() == 3
        assert await gw.deliver_all() >= 3
        clock.advance(timedelta(minutes=5))
        await acknowledge(gw, home, refs["acknowledged"])
        await gw.deliver_all()
    finally:
        await gw.stop()
    return path, refs


def report(capsys: pytest.CaptureFixture[str], path: Path, fmt: str, *more: str) -> str:
    code = main(["report", "undelivered", "--format", fmt, *more, "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    return out


def item(lines: list[str], reference: str) -> list[str]:
    """An item of the 100-column table: its first line and the indented reason lines under it."""
    start = next(n for n, line in enumerate(lines) if line.startswith(reference))
    end = next((n for n in range(start + 1, len(lines)) if not lines[n].startswith(" ")), len(lines))
    return lines[start:end]


def test_report_table_fits_100_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = asyncio.run(build_store(tmp_path / "gw"))
    out = report(capsys, path, "table")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, out
    assert lines[0].split() == ["reference", "state", "received", "age", "team"]
    assert lines[-1] == "2 referral(s) need attention."
    late = item(lines, refs["late"])
    assert late[0].split()[:2] == [refs["late"], "alerted"] and "2d 0h 30m" in late[0] and "MASH duty team" in late[0]
    received = (datetime.now(UTC) - timedelta(days=2, minutes=30)).strftime("%Y-%m-%d")
    assert received in late[0]
    reason = " ".join(line.strip() for line in late[1:])
    assert reason == "not acknowledged within 4 working hours (overdue by 1d 20h 30m)"
    incomplete = item(lines, refs["incomplete"])
    assert "Front door triage team" in incomplete[0]
    assert "not acknowledged within 15 minutes (overdue by 2d 0h 15m)" in " ".join(incomplete[1:])
    assert refs["acknowledged"] not in out


def test_report_table_cuts_a_long_reason_and_team_to_100_columns() -> None:
    from gateway.report.undelivered import Row, render

    # A dead delivery's reason carries the provider's error (up to 200 characters) and a step's
    # everyone-alerted list runs long: realistic worst cases, synthetic names.
    error = "550 5.1.1 <duty@mash.demo-council.example>: Recipient address rejected: " + "x" * 120
    row = Row(
        reference="7KM4-Q9XC",
        team="Multi-Agency Safeguarding Hub duty team (north locality)",
        state="undeliverable",
        received_at=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        age=timedelta(days=12, hours=23, minutes=59),
        reason="; ".join([f"alert to MASH duty team failed for good after 8 attempts: {error}"] * 3),
        escalation="step 3 (coordinators) at 2026-11-25 10:25 UTC; alerted: " + ", ".join(["Asha Okafor (sms)"] * 20),
    )
    out = render([row], "table")
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert len(out.splitlines()) == 1 + 1 + 3 + 1  # header, the item, 3 reason lines, the count
    assert out.splitlines()[-2].endswith("...")  # cut, and says so
    assert out.splitlines()[1].endswith("  Multi-Agency Safeguarding H...")  # the team, cut to 30
    wide = render([row], "table", wide=True)
    assert row.reason in wide and row.escalation in wide and row.team in wide  # in full
    assert max(len(line) for line in wide.splitlines()) > 200


def test_report_table_wide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = asyncio.run(build_store(tmp_path / "gw"))
    lines = report(capsys, path, "table", "--wide").splitlines()
    assert lines[0].split() == ["reference", "team", "state", "received", "age", "escalation", "reason"]
    assert lines[-1] == "2 referral(s) need attention."
    (late,) = [line for line in lines if refs["late"] in line]
    assert "MASH duty team" in late and "alerted" in late
    assert "2d 0h 30m" in late
    assert "not acknowledged within 4 working hours (overdue by 1d 20h 30m)" in late
    # Who has been alerted so far, and at which step of the chain (no ticks of the clock since).
    assert "step 1 (on-duty, mailbox) at " in late and "alerted: " in late and "MASH duty team (email)" in late
    (incomplete,) = [line for line in lines if refs["incomplete"] in line]
    assert "Front door triage team" in incomplete
    assert "not acknowledged within 15 minutes (overdue by 2d 0h 15m)" in incomplete
    assert refs["acknowledged"] not in "\n".join(lines)


def test_report_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = asyncio.run(build_store(tmp_path / "gw"))
    rows = list(csv.DictReader(io.StringIO(report(capsys, path, "csv"))))
    assert rows, "no rows"
    assert list(rows[0]) == ["reference", "team", "state", "received", "age", "escalation", "reason"]
    by_ref = {row["reference"]: row for row in rows}
    assert set(by_ref) == {refs["late"], refs["incomplete"]}
    late = by_ref[refs["late"]]
    assert late["team"] == "MASH duty team"
    assert late["state"] == "alerted"
    assert late["age"] == "2d 0h 30m"
    assert late["received"].endswith(" UTC")
    assert late["reason"].startswith("not acknowledged within 4 working hours")
    assert "MASH duty team (email)" in late["escalation"]
    assert by_ref[refs["incomplete"]]["team"] == "Front door triage team"


def test_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, refs = asyncio.run(build_store(tmp_path / "gw"))
    rows = json.loads(report(capsys, path, "json"))
    assert isinstance(rows, list)
    by_ref = {row["reference"]: row for row in rows}
    assert set(by_ref) == {refs["late"], refs["incomplete"]}
    late = by_ref[refs["late"]]
    assert {"reference", "team", "state", "received_at", "age", "age_seconds", "reason"} <= set(late)
    assert late["team"] == "MASH duty team" and late["state"] == "alerted"
    expected_age = timedelta(days=2, minutes=30).total_seconds()
    assert expected_age <= late["age_seconds"] < expected_age + 60
    assert late["age"] == "2d 0h 30m"
    received = datetime.fromisoformat(late["received_at"])
    assert abs(datetime.now(UTC) - timedelta(days=2, minutes=30) - received) < timedelta(minutes=1)
    assert "not acknowledged within 4 working hours" in late["reason"]
    assert late["escalation"].startswith("step 1 (on-duty, mailbox) at ")


def test_report_on_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw")
    assert report(capsys, path, "table") == "No undelivered, late or quarantined referrals.\n"
    assert list(csv.reader(io.StringIO(report(capsys, path, "csv")))) == [
        ["reference", "team", "state", "received", "age", "escalation", "reason"]
    ]
    assert json.loads(report(capsys, path, "json")) == []


def test_report_rejects_an_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw")
    with pytest.raises(SystemExit) as exited:
        main(["report", "undelivered", "--format", "xml", "--config", str(path)])
    assert exited.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_report_keeps_a_referral_whose_stored_message_row_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing leaves the report by itself: a referral must not vanish from it because a row it
    # is joined to (the raw message, only needed for its processing error) is gone.
    path, refs = asyncio.run(build_store(tmp_path / "gw"))
    with closing(sqlite3.connect(tmp_path / "gw" / "var" / "gateway.db")) as conn:
        deleted = conn.execute(
            "DELETE FROM messages WHERE id = (SELECT message_id FROM referrals WHERE reference = ?)",
            (refs["late"],),
        ).rowcount
        conn.commit()
    assert deleted == 1
    rows = json.loads(report(capsys, path, "json"))
    assert refs["late"] in {row["reference"] for row in rows}


def test_csv_cells_a_spreadsheet_would_run_are_defused() -> None:
    from gateway.report.undelivered import Row, render

    row = Row(
        reference='=HYPERLINK("http://x.example")',
        team="+team",
        state="@state",
        received_at=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        age=timedelta(minutes=5),
        reason="-1+2",
        escalation="",
    )
    (parsed,) = list(csv.DictReader(io.StringIO(render([row], "csv"))))
    assert parsed["reference"] == '\'=HYPERLINK("http://x.example")'
    assert parsed["team"] == "'+team" and parsed["state"] == "'@state" and parsed["reason"] == "'-1+2"
    assert parsed["escalation"] == "-"  # the empty-cell placeholder stays as it is
