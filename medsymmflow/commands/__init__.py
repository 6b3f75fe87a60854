"""Subcommands of the ``medsymmflow`` console script; each module has ``add_arguments`` and ``run``."""
