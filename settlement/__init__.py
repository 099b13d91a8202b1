"""Settlement: business days, the ledger, bank files, bank returns and subsidy claims.

Reads what the gateway journaled; nothing in :mod:`gateway` imports from here.
"""

from gateway import db


def migrations() -> list[db.Migration]:
    """Return settlement's schema migrations, applied after the gateway's."""
    return db.discover("settlement")
