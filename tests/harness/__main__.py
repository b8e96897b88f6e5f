"""`python -m tests.harness [--full | --ci] [--seed N] [--out DIR] [--jobs N]`: see tests/harness/__init__.py."""

import sys

from .run import main

sys.exit(main())
