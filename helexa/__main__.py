"""``python -m helexa`` runs the CLI."""

from helexa.cli import main

main()
