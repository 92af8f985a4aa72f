"""``python -m flows.cli``: the ``odir`` command without its console script."""

import sys

from flows.cli import main

sys.exit(main())
