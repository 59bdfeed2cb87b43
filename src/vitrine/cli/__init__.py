"""The ``vitrine`` command line."""

from vitrine.cli.main import app, main

__all__ = ["app", "main"]
