"""`python -m zlh_actors ...`: the operator's commands (tokens, launcher pins)."""

import sys

from zlh_actors import operator_cli

sys.exit(operator_cli.main())
