"""`python -m runnerd`."""

from __future__ import annotations

import sys

from runnerd import cli

sys.exit(cli.main())
