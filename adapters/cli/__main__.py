"""`python -m snapledger.adapters.cli`: the command line."""

import sys

from snapledger.adapters.cli.entry import main

sys.exit(main())
