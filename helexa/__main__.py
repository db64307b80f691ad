"""``python -m helexa`` runs the CLI."""

from helexa.cli.commands import main

main()
