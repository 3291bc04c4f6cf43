"""`python -m zlh_actors.cli ...`: the `zlh` console script without installing it."""

import sys

from zlh_actors.cli import main

sys.exit(main.main())
