"""`python -m fewclip.cli`: the same entry point as the `fewclip` console script."""

import sys

from . import main

sys.exit(main())
