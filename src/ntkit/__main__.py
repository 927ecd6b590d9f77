"""``python -m ntkit``: the ``ntkit`` command."""

from ntkit.cli import main

main()
