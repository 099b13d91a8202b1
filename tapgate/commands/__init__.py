"""Subcommands of ``tapgate``: one module each, discovered by :func:`tapgate.cli.build_parser`."""
