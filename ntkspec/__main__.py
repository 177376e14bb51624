"""`python -m ntkspec ...`: the command line, the same as the `ntkspec` script."""

from ntkspec.cli import app

app(prog_name="ntkspec")
