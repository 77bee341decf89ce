"""`python -m musicgen_live.bridges.cli`: the same as the `musicgen-live` script."""

import sys

from . import main

sys.exit(main())
