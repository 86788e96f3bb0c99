"""`python -m agent` is the `shopfloor` command."""

from agent.cli import main

raise SystemExit(main())
