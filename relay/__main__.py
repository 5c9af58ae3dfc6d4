"""``python -m relay`` is the ``relay`` command."""

import sys

from relay.app.cli import main

sys.exit(main())
