"""``python -m scheduler``: the same as the ``vsched`` command."""

import sys

from .cli import main

sys.exit(main())
