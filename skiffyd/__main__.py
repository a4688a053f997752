"""``python -m skiffyd`` is the ``skiffyd`` command."""

from skiffyd.cli import main

main()
