"""Example rule sets shipped as package data (illustrative, not real fares)."""
