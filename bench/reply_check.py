"""The reply stage's cost per email (issue 15): looking for a referral reference in the Subject and
body of every incoming email, against parsing the referral (the parse stage) in the same run.

    .venv/bin/python bench/reply_check.py [--messages 20000] [--rounds 5]

In process, no server: both are pure functions over the same filled referral form (tests/conftest.py).
Prints each round's microseconds per message for both and their ratio, then the median of each.
A message with no reference-shaped token makes no database statement, so this is the whole cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from gateway.parse.referral import parse_email
    from gateway.pipeline.replies import references_in_body, references_in_subject, subject_of
    from tests.conftest import make_message, referral_body

    text = referral_body()
    raw = make_message(text).as_bytes()
    today = date(2026, 12, 4)
    checks: list[float] = []
    parses: list[float] = []
    for n in range(1, args.rounds + 1):
        check = timeit.timeit(
            lambda: references_in_subject(subject_of(raw)) + references_in_body(text), number=args.messages
        )
        parse = timeit.timeit(lambda: parse_email(text, None, today), number=args.messages)
        checks.append(check / args.messages * 1e6)
        parses.append(parse / args.messages * 1e6)
        print(
            f"round {n}: reply check {checks[-1]:.1f} us/msg, parse (baseline) {parses[-1]:.1f} us/msg, "
            f"ratio {checks[-1] / parses[-1]:.3f}"
        )
    check_median, parse_median = statistics.median(checks), statistics.median(parses)
    print(
        f"median: reply check {check_median:.1f} us/msg, parse {parse_median:.1f} us/msg, "
        f"ratio: {check_median / parse_median:.3f}"
    )


if __name__ == "__main__":
    main()
