"""`python -m gateway` is the same as the `referral-gateway` console script."""

from gateway.cli.main import main

raise SystemExit(main())
