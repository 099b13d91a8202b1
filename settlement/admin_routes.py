"""Entry point that ``tapgate admin serve`` looks for: the settlement read routes of :mod:`settlement.admin`."""

from settlement.admin import register

__all__ = ["register"]
