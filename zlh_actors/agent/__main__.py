"""`python -m zlh_actors.agent`: the same as the `zlh-agent` console script."""

from zlh_actors.agent import main

raise SystemExit(main.main())
