"""Subcommands of the ``editforge`` CLI, one module each (see ``editforge.cli``)."""
