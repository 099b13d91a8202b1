"""Command line and end-to-end composition of the gateway and settlement."""
