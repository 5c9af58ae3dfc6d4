"""``python -m relay`` is the ``relay`` command."""

from relay.app.cli import run

run()
