"""`python -m lipzoo`: the same entry point as the `lipzoo` script."""

import sys

from lipzoo.cli import main

sys.exit(main())
