"""``python -m hubmerge`` runs the command line."""

from .cli import run

run()
