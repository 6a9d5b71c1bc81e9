"""``python -m nbdl``: the same as the ``nbdl`` command."""

import sys

from nbdl.cli import main

sys.exit(main())
