"""`python -m clrepro` runs the command-line interface."""

from clrepro.cli.main import entry

entry()
