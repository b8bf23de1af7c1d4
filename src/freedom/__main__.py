"""`python -m freedom ...` is the `freedom` command."""

import sys

from freedom.cli import main

sys.exit(main())
