"""``python -m skiffyd`` is the ``skiffyd`` command."""

from skiffyd.entry import main

main()
