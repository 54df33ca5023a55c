"""``python -m workers``: the worker command line."""

from workers.cli import main

main()
