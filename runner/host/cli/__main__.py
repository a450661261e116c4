"""`python -m runner.host.cli`: the `runner` command."""

from runner.host.cli import main

main()
