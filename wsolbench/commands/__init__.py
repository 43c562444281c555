"""Subcommands of the ``wsolbench`` command line (imported lazily by :mod:`wsolbench.cli`)."""
